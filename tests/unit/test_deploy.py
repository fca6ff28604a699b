"""deploy/ stays true: Flower's unit refuses to run without credentials; env files name real settings."""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from workers.settings import Settings

DEPLOY = Path(__file__).parents[2] / "deploy"


def unit(name: str) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(DEPLOY / "systemd" / name)
    return parser


def test_flower_unit_refuses_to_start_without_credentials():
    guard = unit("failover-flower.service")["Service"]["ExecStartPre"]
    assert guard.startswith("/bin/sh -c ")
    script = guard.removeprefix("/bin/sh -c ").strip("'")
    env = {k: v for k, v in os.environ.items() if k != "FLOWER_BASIC_AUTH"}
    refused = subprocess.run(["/bin/sh", "-c", script], env=env, capture_output=True, text=True)
    assert refused.returncode != 0
    assert "refusing to run Flower without authentication" in refused.stderr
    allowed = subprocess.run(["/bin/sh", "-c", script], env={**env, "FLOWER_BASIC_AUTH": "u:p"})
    assert allowed.returncode == 0


def test_flower_listens_on_loopback_only():
    start = unit("failover-flower.service")["Service"]["ExecStart"]
    assert "--address=127.0.0.1" in start and "celery -A workers flower" in start


def test_flower_does_not_ask_the_nodes_for_task_events():
    """The nodes refuse Flower's periodic enable_events anyway; the shipped Flower does not
    send it, so it costs no node a message every 5 s."""
    start = unit("failover-flower.service")["Service"]["ExecStart"]
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert "--enable_events=False" in start.split()
    assert "--enable_events=False" in compose["services"]["flower"]["command"]


def test_every_setting_in_the_env_files_exists():
    fields = {f"FAILOVER_{name.upper()}" for name in Settings.model_fields}
    for env_file in (DEPLOY / "env").glob("*.env.example"):
        for line in env_file.read_text().splitlines():
            if line.startswith("FAILOVER_"):
                assert line.split("=", 1)[0] in fields, (env_file.name, line)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_units_pass_systemd_analyze_verify(tmp_path):
    for path in (DEPLOY / "systemd").glob("*.service"):
        result = subprocess.run(
            ["systemd-analyze", "verify", str(path)], capture_output=True, text=True
        )
        problems = [
            line
            for line in result.stderr.splitlines()
            if path.name in line and "is not executable" not in line
        ]
        assert not problems, problems


def test_the_shared_env_file_sets_every_required_setting():
    shared = (DEPLOY / "env" / "common.env.example").read_text()
    for required in ("FAILOVER_DATABASE_URL=", "FAILOVER_BROKER_URL="):
        assert required in shared
