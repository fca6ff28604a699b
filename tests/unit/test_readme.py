"""The README's configuration table and the settings model say the same thing."""

from __future__ import annotations

import re
from pathlib import Path

from workers.settings import Settings

README = (Path(__file__).parents[2] / "README.md").read_text()


def test_every_setting_is_documented_and_every_documented_setting_exists():
    documented = set(re.findall(r"^\| `FAILOVER_([A-Z_]+)` \|", README, re.MULTILINE))
    fields = {name.upper() for name in Settings.model_fields}
    assert documented - {"CONFIG"} == fields


def test_readme_install_and_test_commands_are_the_ones_ci_runs():
    ci = (Path(__file__).parents[2] / ".ci" / "run").read_text()
    for command in ("python3 -m venv .venv && . .venv/bin/activate", "pip install -e '.[test]' &&"):
        assert command in README and command in ci
    assert "pip install -e '.[demo]' && failover demo" in README
