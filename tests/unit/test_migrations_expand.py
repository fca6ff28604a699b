"""Rolling upgrades: from revision 0008 on, a migration only adds (expand), so the nodes still
running the previous release keep working against the new schema; what removes or
restricts (contract) waits for a revision that says after which release it is safe.

Revision 0007 broke this (it dropped `folder_file_arrival_key`, which 0006's code names in
`ON CONFLICT ON CONSTRAINT`): the check below finds exactly that in it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

VERSIONS = Path(__file__).parents[2] / "schema" / "versions"
FIRST_EXPAND_ONLY = 8
CONTRACT = re.compile(r'^contract_after\s*=\s*"([^"]+)"', re.MULTILINE)
NOT_EXPAND = {
    "drops": r"\bDROP\s+(TABLE|COLUMN|CONSTRAINT|INDEX|VIEW|TYPE|FUNCTION|TRIGGER|DEFAULT)\b",
    "renames": r"\bRENAME\b",
    "makes a column NOT NULL": r"\bSET\s+NOT\s+NULL\b",
    "changes a column's type": r"\bALTER\s+COLUMN\s+\w+\s+(SET\s+DATA\s+)?TYPE\b",
    "adds a constraint the previous code may break": r"\bADD\s+CONSTRAINT\b",
    "deletes or truncates rows": r"\b(DELETE\s+FROM|TRUNCATE)\b",
    "drops or alters through Alembic": r"\bop\.(drop_\w+|alter_column|rename_table)\b",
}


def statements(revision: Path) -> str:
    """The revision's SQL and Python, without comments."""
    texts = [revision.read_text()]
    sql = revision.with_suffix(".sql")
    if sql.exists():
        texts.append(sql.read_text())
    return re.sub(r"--[^\n]*|#[^\n]*", "", "\n".join(texts))


def violations(revision: Path) -> list[str]:
    """What in the revision the previous release's nodes could trip on."""
    found = statements(revision)
    return [
        f"{revision.name} {what}: {match.group(0)!r}"
        for what, pattern in NOT_EXPAND.items()
        for match in re.finditer(pattern, found, re.IGNORECASE)
    ] + [
        f"{revision.name} adds a NOT NULL column without a default: {column!r}"
        for column in re.findall(r"\bADD\s+COLUMN\b[^,;]*", found, re.IGNORECASE)
        if re.search(r"\bNOT\s+NULL\b", column, re.I)
        and not re.search(r"\bDEFAULT\b", column, re.I)
    ]


def revisions(first: int) -> list[Path]:
    return sorted(p for p in VERSIONS.glob("[0-9][0-9][0-9][0-9]_*.py") if int(p.name[:4]) >= first)


@pytest.mark.parametrize("revision", revisions(FIRST_EXPAND_ONLY), ids=lambda p: p.stem)
def test_a_migration_only_expands_unless_it_names_the_release_it_contracts_after(revision):
    if CONTRACT.search(revision.read_text()):
        return
    assert violations(revision) == [], (
        "a migration must keep the previous release's nodes working: add only, or declare "
        'contract_after = "<release>" (see schema/README.md)'
    )


def test_the_check_finds_what_broke_the_rolling_upgrade_to_0007():
    found = violations(VERSIONS / "0007_side_effect_fence.py")
    assert any("DROP CONSTRAINT" in line for line in found), found


def test_the_check_lets_an_additive_migration_through(tmp_path):
    revision = tmp_path / "0099_more.py"
    revision.write_text('"""More."""\n# ALTER TABLE x DROP COLUMN y is only a comment\n')
    revision.with_suffix(".sql").write_text(
        "ALTER TABLE folder_file ADD COLUMN note TEXT, ADD COLUMN tries INT NOT NULL DEFAULT 0;\n"
        "ALTER TABLE script_run ADD COLUMN host TEXT;\n"
        "CREATE INDEX folder_file_note_idx ON folder_file (note);\n"
    )
    assert violations(revision) == []


def test_the_check_refuses_a_not_null_column_the_previous_code_cannot_fill(tmp_path):
    revision = tmp_path / "0099_more.py"
    revision.write_text(
        '"""More."""\nop.execute("ALTER TABLE script_run ADD COLUMN host TEXT NOT NULL")\n'
    )
    assert [line.split(":")[0] for line in violations(revision)] == [
        "0099_more.py adds a NOT NULL column without a default"
    ]
