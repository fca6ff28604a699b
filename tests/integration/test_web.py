"""`failover web` against a real database: its routes, its authentication, what it refuses,
and the metrics the shipped dashboard and alerts name (each must be exported)."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests
import yaml
from prometheus_client.core import CounterMetricFamily
from sqlalchemy import text

from tests.integration.test_cli import assert_one_line_error, failover
from tests.support.flower import free_port
from tests.support.registry import add_node, give
from workers.operations import web
from workers.operations.metrics import ClusterCollector
from workers.settings import load_settings
from workers.stores.database import transaction

DEPLOY = Path(__file__).parents[2] / "deploy"
EVIL = '<img src=x onerror="window.pwned=1">'


@contextmanager
def serving(settings) -> Iterator[str]:
    port = free_port()
    server = web.serve(settings, "127.0.0.1", port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.shutdown()
        server.server_close()


def with_web_auth(settings, **auth):
    return load_settings(**{**settings.model_dump(), **auth})


def test_every_route_answers_with_what_the_page_needs(settings):
    add_node(settings, "a", region="eu")
    give(settings, "folder_monitor", "a")
    with serving(settings) as base:
        page = requests.get(base + "/", timeout=5)
        assert page.status_code == 200 and "page.js" in page.text
        assert "default-src 'none'" in page.headers["Content-Security-Policy"]
        for asset in ("/page.js", "/page.css"):
            assert requests.get(base + asset, timeout=5).status_code == 200
        status = requests.get(base + "/api/status", timeout=5).json()
        assert {"nodes", "services", "events", "recent_runs", "colours"} <= set(status)
        owners = {s["service"]: s["owner"] for s in status["services"]}
        assert owners["folder_monitor"] == "a" and status["colours"]["a"].startswith("#")
        history = requests.get(base + "/api/history?service=folder_monitor", timeout=5).json()
        assert [event["to"] for event in history] == ["a"]
        svg = requests.get(base + "/timeline.svg?window=15m", timeout=5)
        assert svg.headers["Content-Type"].startswith("image/svg+xml")
        ET.fromstring(svg.text)
        assert requests.get(base + "/timeline.svg?window=2y", timeout=5).status_code == 400
        metrics = requests.get(base + "/metrics", timeout=5).text
        assert 'failover_node_lease_timeout_seconds{node="a",region="eu"} 1.5' in metrics
        assert 'failover_service_owner_live{service="folder_monitor"} 1.0' in metrics
        assert requests.get(base + "/nothing", timeout=5).status_code == 404


def test_with_credentials_every_route_needs_them_and_no_secret_is_served(settings):
    guarded = with_web_auth(
        settings, web_user="operator", web_password="pw-s3cret", web_token="tok-s3cret"
    )
    add_node(settings, "a")
    with serving(guarded) as base:
        for path in ("/", "/api/status", "/timeline.svg", "/metrics"):
            refused = requests.get(base + path, timeout=5)
            assert refused.status_code == 401
            assert refused.headers["WWW-Authenticate"].startswith("Basic")
            wrong = requests.get(base + path, auth=("operator", "nope"), timeout=5)
            assert wrong.status_code == 401
        bodies = [
            requests.get(base + path, auth=("operator", "pw-s3cret"), timeout=5)
            for path in ("/", "/page.js", "/api/status", "/api/history", "/timeline.svg")
        ]
        bodies.append(
            requests.get(
                base + "/metrics", headers={"Authorization": "Bearer tok-s3cret"}, timeout=5
            )
        )
        assert all(body.status_code == 200 for body in bodies)
        served = "".join(body.text for body in bodies)
        assert "s3cret" not in served
        assert settings.database_url not in served and "postgresql" not in served


def test_names_and_reasons_are_served_as_text_never_markup(settings):
    add_node(settings, "a")
    with transaction(settings) as connection:
        connection.execute(
            text(
                "INSERT INTO server_registry (node_name, region, incarnation, lease_timeout_s, "
                "heartbeat_interval_s, is_active) VALUES "
                "(:evil, :evil, gen_random_uuid(), 1.5, 0.3, true)"
            ),
            {"evil": "<script>x</script>"},
        )
        connection.execute(
            text(
                "UPDATE service_status SET epoch = epoch + 1, acquired_reason = 'manual', "
                "acquired_detail = :evil, acquired_by = :by, service_registry_id = "
                "(SELECT id FROM server_registry WHERE node_name = 'a')"
                " WHERE service_type = 'folder_monitor'"
            ),
            {"evil": EVIL, "by": EVIL},
        )
    with serving(settings) as base:
        svg = requests.get(base + "/timeline.svg?window=15m", timeout=5).text
        assert "<script" not in svg and "<img" not in svg
        assert "&lt;script&gt;x&lt;/script&gt;" in svg
        assert EVIL in "".join(ET.fromstring(svg).itertext())
        status = requests.get(base + "/api/status", timeout=5).json()
        assert status["events"][0]["detail"] == EVIL


def test_the_server_refuses_a_public_address_without_authentication(settings, database_url):
    port = str(free_port())
    refused = failover("web", "--address", "0.0.0.0", "--port", port,
                       FAILOVER_DATABASE_URL=database_url)  # fmt: skip
    assert "refusing to serve on 0.0.0.0 without authentication" in assert_one_line_error(
        refused, 2
    )
    assert web.is_loopback("127.0.0.1") and web.is_loopback("::1")
    assert web.is_loopback("localhost")
    assert not web.is_loopback("0.0.0.0")
    assert web.Guard(with_web_auth(settings, web_token="t")).required
    assert not web.Guard(with_web_auth(settings, web_user="only-a-user")).required


def test_history_svg_writes_the_timeline_to_a_file(settings, database_url, tmp_path):
    add_node(settings, "a")
    give(settings, "folder_monitor", "a")
    picture = tmp_path / "report.svg"
    done = failover("history", "--svg", str(picture), "--window", "6h",
                    FAILOVER_DATABASE_URL=database_url)  # fmt: skip
    assert done.returncode == 0, done.stderr
    root = ET.fromstring(picture.read_text())
    assert "folder_monitor" in "".join(root.itertext())
    wrong = failover("history", "--svg", str(picture), "--window", "3w",
                     FAILOVER_DATABASE_URL=database_url)  # fmt: skip
    assert_one_line_error(wrong, 2)


def exported(settings) -> set[str]:
    """Every metric name the exporter serves (a counter also as NAME_total)."""
    names = set()
    for family in ClusterCollector(settings).collect():
        names.add(family.name)
        if isinstance(family, CounterMetricFamily) or family.type == "counter":
            names.add(f"{family.name}_total")
    return names


def named(expressions: list[str]) -> set[str]:
    return {name for expr in expressions for name in re.findall(r"\bfailover_[a-z_]+", expr)}


def test_the_dashboard_and_the_alerts_name_only_exported_metrics(settings):
    add_node(settings, "a")
    give(settings, "folder_monitor", "a")
    names = exported(settings)
    dashboard = json.loads((DEPLOY / "grafana" / "failover-dashboard.json").read_text())
    queries = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert named(queries) and named(queries) <= names, named(queries) - names
    rules = yaml.safe_load((DEPLOY / "prometheus" / "failover-alerts.yml").read_text())
    exprs = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    assert named(exprs) <= names, named(exprs) - names
    timelines = [p for p in dashboard["panels"] if p["type"] == "state-timeline"]
    assert any("failover_service_owner" in t["expr"] for p in timelines for t in p["targets"])


def test_a_handover_in_progress_is_exported_and_shown(settings):
    service = "folder_monitor"
    add_node(settings, "a")
    add_node(settings, "b")
    give(settings, service, "a")
    with transaction(settings) as connection:
        connection.execute(
            text(
                "UPDATE service_status SET handover_to = 'b', handover_reason = 'manual', "
                "handover_since = clock_timestamp(), "
                "handover_until = clock_timestamp() + interval '30 seconds' "
                "WHERE service_type = :service"
            ),
            {"service": service},
        )
    with serving(settings) as base:
        metrics = requests.get(base + "/metrics", timeout=5).text
        assert re.search(
            rf'failover_service_handover_seconds_left\{{service="{service}",to="b"\}} 2\d\.',
            metrics,
        )
        status = requests.get(base + "/api/status", timeout=5).json()
        handover = next(s["handover"] for s in status["services"] if s["service"] == service)
        assert handover["to"] == "b" and 20 < handover["left_s"] <= 30
