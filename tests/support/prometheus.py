"""A real Prometheus (Debian's `/usr/bin/prometheus`) that scrapes a test's `failover
metrics` and evaluates the shipped alert rules, asked through its HTTP API.

The rules it loads are `deploy/prometheus/failover-alerts.yml` with every `for:` shortened
(`rules_for_a_test`): those durations are meant for production (30 s, 1 min, 5 min), and
a test must not wait for them; every expression stays the shipped one.
"""

from __future__ import annotations

import copy
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests
import yaml

from tests.support.cluster import wait_until
from tests.support.flower import free_port, stop

PROMETHEUS = Path("/usr/bin/prometheus")
RULES = Path(__file__).parents[2] / "deploy" / "prometheus" / "failover-alerts.yml"


def rules_for_a_test(shipped: dict[str, Any], pending: str) -> dict[str, Any]:
    """The shipped rule groups, each alert's `for:` (if any) replaced by `pending`."""
    rules = copy.deepcopy(shipped)
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = pending
    return rules


def config(target: str, rule_file: Path, interval: str) -> dict[str, Any]:
    """A Prometheus configuration that scrapes `target` and evaluates `rule_file` every
    `interval`."""
    return {
        "global": {
            "scrape_interval": interval,
            "scrape_timeout": interval,
            "evaluation_interval": interval,
        },
        "rule_files": [str(rule_file)],
        "scrape_configs": [
            {"job_name": "failover", "static_configs": [{"targets": [target]}]},
        ],
    }


@contextmanager
def prometheus(folder: Path, target: str, interval: str = "500ms") -> Iterator[str]:
    """Prometheus scraping `target` (host:port of `failover metrics`); its base URL."""
    assert PROMETHEUS.exists(), "prometheus is missing: apt-get install prometheus (README)"
    rule_file = folder / "failover-alerts.yml"
    shipped = yaml.safe_load(RULES.read_text())
    rule_file.write_text(yaml.safe_dump(rules_for_a_test(shipped, pending="1s")))
    config_file = folder / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config(target, rule_file, interval)))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = [
        str(PROMETHEUS),
        f"--config.file={config_file}",
        f"--storage.tsdb.path={folder / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    with (folder / "prometheus.log").open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: _ready(base), 30, "Prometheus to be ready")
        yield base
    finally:
        stop(process)


def _ready(base: str) -> bool:
    try:
        return requests.get(base + "/-/ready", timeout=1).ok
    except requests.RequestException:
        return False


def query(base: str, expression: str) -> list[dict[str, Any]]:
    """The instant vector `expression` evaluates to now: each sample's labels and value."""
    answer = requests.get(base + "/api/v1/query", params={"query": expression}, timeout=5)
    answer.raise_for_status()
    return [
        {**sample["metric"], "value": float(sample["value"][1])}
        for sample in answer.json()["data"]["result"]
    ]


def firing(base: str) -> list[dict[str, str]]:
    """The labels of every alert firing now (pending ones are left out)."""
    answer = requests.get(base + "/api/v1/alerts", timeout=5)
    answer.raise_for_status()
    return [
        alert["labels"] for alert in answer.json()["data"]["alerts"] if alert["state"] == "firing"
    ]


def fires(base: str, alertname: str, **labels: str) -> bool:
    """Whether an alert `alertname` with these labels is firing now."""
    return any(
        alert["alertname"] == alertname and all(alert.get(k) == v for k, v in labels.items())
        for alert in firing(base)
    )
