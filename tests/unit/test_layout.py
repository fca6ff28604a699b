"""The house stays as docs/design.md draws it: each part of `workers/` imports only the parts
below it (no cycle), no product file grows past 450 lines, and each built-in service's
tables are named only in its own folder."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).parents[2]
PRODUCT = [
    *sorted((ROOT / "workers").rglob("*.py")),
    *sorted((ROOT / "beat_schedule").rglob("*.py")),
]
LAYERS = {
    "workers.errors": 0,
    "workers.decision": 1,
    "workers.settings": 2,
    "workers.stores": 3,
    "workers.fence": 4,
    "workers.queues": 5,
    "workers.services": 6,
    "beat_schedule": 6,
    "workers.runtime": 7,
    "workers.celery": 8,
    "workers.operations": 8,
    "workers.testing": 9,
    "workers.__main__": 10,
}
"""Bottom first: a module may import its own layer's and lower layers' modules only."""
MAX_LINES = 450
SERVICE_TABLES = {
    "folder_file": "workers/services/folder_monitor/",
    "script_run": "workers/services/app_script/",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int | None:
    if module == "workers":
        return 0
    found = [
        depth
        for prefix, depth in LAYERS.items()
        if module == prefix or module.startswith(prefix + ".")
    ]
    return max(found) if found else None


MODULES = {module_name(p) for p in PRODUCT}


def imported(path: Path) -> set[str]:
    """The product modules `path` imports, at the top or inside a function: for
    `from package import name`, the submodule `package.name` if there is one, else the package."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                names.add(submodule if submodule in MODULES else node.module)
    return {name for name in names if name.split(".")[0] in ("workers", "beat_schedule")}


def test_every_product_module_has_a_layer() -> None:
    assert [module_name(p) for p in PRODUCT if layer(module_name(p)) is None] == []


def test_nothing_imports_upward() -> None:
    upward = [
        f"{module_name(path)} -> {name}"
        for path in PRODUCT
        for name in sorted(imported(path))
        if (layer(name) or 0) > (layer(module_name(path)) or 0)
    ]
    assert upward == []


def test_no_module_imports_in_a_circle() -> None:
    modules = {module_name(p): p for p in PRODUCT}
    edges = {
        name: {m for m in imported(path) if m in modules and m != name}
        for name, path in modules.items()
    }
    state: dict[str, int] = {}

    def circle_from(name: str, trail: list[str]) -> list[str] | None:
        state[name] = 1
        for following in sorted(edges[name]):
            if state.get(following) == 1:
                return [*trail, name, following]
            if following not in state and (found := circle_from(following, [*trail, name])):
                return found
        state[name] = 2
        return None

    circles = [
        found for name in sorted(modules) if name not in state and (found := circle_from(name, []))
    ]
    assert circles == []


def test_no_product_file_is_over_450_lines() -> None:
    long = {
        str(p.relative_to(ROOT)): n
        for p in PRODUCT
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


def test_a_service_s_tables_are_named_only_in_its_own_folder() -> None:
    strays = [
        f"{path.relative_to(ROOT)}: {table}"
        for path in PRODUCT
        for table, home in SERVICE_TABLES.items()
        if table in path.read_text() and not str(path.relative_to(ROOT)).startswith(home)
    ]
    assert strays == []
