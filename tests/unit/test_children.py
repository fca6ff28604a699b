"""A child process sees an allow-list of the node's environment, never its secrets."""

from __future__ import annotations

import subprocess

import pytest

from workers.fence.children import child_environment


@pytest.fixture
def node_environment(monkeypatch):
    monkeypatch.setenv("FAILOVER_DATABASE_URL", "postgresql://app:s3cret@db/failover")
    monkeypatch.setenv("FAILOVER_BROKER_URL", "redis://:r3dis@broker:6379/0")
    monkeypatch.setenv("PGPASSWORD", "s3cret")
    monkeypatch.setenv("PATH", "/usr/local/bin:/usr/bin:/bin")
    monkeypatch.setenv("LC_TIME", "C.UTF-8")
    monkeypatch.setenv("PYTHONPATH", "/opt/app")


def run_env(env: dict[str, str]) -> dict[str, str]:
    """What a real child process finds in its environment."""
    printed = subprocess.run(
        ["/usr/bin/env", "-0"], env=env, capture_output=True, check=True, timeout=10
    ).stdout.decode()
    return dict(entry.split("=", 1) for entry in printed.split("\0") if entry)


def test_a_child_gets_the_allow_list_its_passthrough_and_its_own_env(node_environment):
    seen = run_env(child_environment({"REPORT_MODE": "full"}, passthrough=["PYTHONPATH"]))
    assert seen["PATH"] == "/usr/local/bin:/usr/bin:/bin"
    assert seen["LC_TIME"] == "C.UTF-8"
    assert seen["PYTHONPATH"] == "/opt/app"
    assert seen["REPORT_MODE"] == "full"
    assert "PGPASSWORD" not in seen
    assert not [name for name in seen if name.startswith("FAILOVER_")]
    assert "s3cret" not in str(seen) and "r3dis" not in str(seen)


def test_failover_variables_stay_out_even_when_passed_through(node_environment):
    seen = run_env(child_environment({}, passthrough=["FAILOVER_DATABASE_URL", "PGPASSWORD"]))
    assert "FAILOVER_DATABASE_URL" not in seen
    assert seen["PGPASSWORD"] == "s3cret"


def test_without_passthrough_nothing_outside_the_allow_list_is_inherited(node_environment):
    seen = run_env(child_environment({}))
    assert "PYTHONPATH" not in seen and "PGPASSWORD" not in seen
    assert seen["PATH"] == "/usr/local/bin:/usr/bin:/bin"


def test_the_script_env_overrides_an_inherited_value(node_environment):
    seen = run_env(child_environment({"PATH": "/opt/app/bin"}))
    assert seen["PATH"] == "/opt/app/bin"
