"""The README's own singleton service, as written there, on a real cluster: owned, run,
moved, drained, and fenced against a stale owner like the built-ins."""

from __future__ import annotations

import importlib.util
import json
import os
import re
from pathlib import Path

import pytest
from celery import Celery

from tests.support.cluster import Cluster, wait_until
from workers.errors import StaleEpoch
from workers.fence.fencing import Fence
from workers.services import ServiceFence
from workers.settings import load_settings
from workers.settings.process import Identity

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]
README = (Path(__file__).parents[2] / "README.md").read_text()
EXAMPLE = re.compile(r"<!-- example: (\S+) -->\n```\w*\n(.*?)```", re.DOTALL)
SERVICE = "ledger_rollup"


def readme_examples() -> dict[str, str]:
    """The code blocks of the README marked `<!-- example: NAME -->`, by name."""
    return dict(EXAMPLE.findall(README))


def readme_cluster(tmp_path: Path, database_url: str, broker_url: str) -> Cluster:
    """The README's module and TOML in the test's folder (runs every 0.3 s, not 30 s), and
    its table in the database."""
    examples = readme_examples()
    assert {"failover.toml", "team_jobs.py", "team_tables.sql"} <= set(examples)
    (tmp_path / "team_jobs.py").write_text(examples["team_jobs.py"])
    toml = tmp_path / "failover.toml"
    toml.write_text(re.sub(r"(?m)^interval = \d+", "interval = 0.3", examples["failover.toml"]))
    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    cluster = Cluster(
        tmp_path, database_url, broker_url, FAILOVER_CONFIG=str(toml), PYTHONPATH=path
    )
    with cluster.engine.begin() as connection:
        connection.exec_driver_sql(examples["team_tables.sql"])
    return cluster


def runs(cluster: Cluster, node: str, epoch: int) -> int:
    rows = cluster.query(
        "SELECT count(*) AS n FROM ledger_rollup WHERE node = :n AND epoch = :e", n=node, e=epoch
    )
    return int(rows[0].n)


def runs_after(cluster: Cluster, epoch: int, moment) -> int:
    """Runs at `epoch` committed after `moment` (database clock): a fenced write cannot."""
    rows = cluster.query(
        "SELECT count(*) AS n FROM ledger_rollup WHERE epoch = :e AND rolled_at > :t",
        e=epoch,
        t=moment,
    )
    return int(rows[0].n)


def changed_at(cluster: Cluster, epoch: int):
    rows = cluster.query(
        "SELECT changed_at FROM ownership_history WHERE service_type = :s AND epoch = :e",
        s=SERVICE,
        e=epoch,
    )
    return rows[0].changed_at


def rejected(cluster: Cluster, node: str) -> int:
    return int(cluster.node_row(node).rejected_side_effects)


def test_the_readme_custom_service_is_owned_moved_drained_and_fenced(
    tmp_path, database_url, broker_url
):
    cluster = readme_cluster(tmp_path, database_url, broker_url)
    try:
        # Given three nodes started with the README's configuration, a first
        cluster.start_live("a", "r1")
        wait_until(lambda: cluster.owners().get(SERVICE) == ("a", 1), 20, "a to own it")
        wait_until(lambda: runs(cluster, "a", 1) >= 2, 20, "a to run the handler")
        cluster.start_live("b", "r1")
        cluster.start_live("c", "r2")
        # When an operator moves it to c
        moved = cluster.cli("move", SERVICE, "--to", "c", "--reason", "try c")
        assert moved.returncode == 0, moved.stderr
        # (a handler's runs are known only to its owner: the move waits for its word)
        assert moved.stdout.splitlines()[-1].startswith(f"moved {SERVICE} to c at epoch 2")
        # Then c runs it at epoch 2, and a's runs at epoch 1 stopped with the move
        wait_until(lambda: runs(cluster, "c", 2) >= 2, 20, "c to run it at epoch 2")
        assert runs_after(cluster, 1, changed_at(cluster, 2)) == 0
        assert runs(cluster, "a", 2) == runs(cluster, "b", 2) == 0
        # And status, its JSON and history show it like a built-in
        report = json.loads(cluster.cli("status", "--json").stdout)
        owned = {s["service"]: (s["owner"], s["epoch"]) for s in report["services"]}
        assert owned[SERVICE] == ("c", 2)
        [row] = report["custom_services"]
        assert (row["service"], row["handler"]) == (SERVICE, "team_jobs:roll_up")
        assert row["ticks_at_epoch"] > 0
        listed = json.loads(cluster.cli("history", SERVICE, "--json").stdout)
        assert [(e["to"], e["epoch"], e["reason"]) for e in listed] == [
            ("c", 2, "manual"),
            ("a", 1, "startup"),
        ]
        # When c is drained, it hands the service to a node of another region (none in r2)
        drained = cluster.cli("drain", "c")
        assert drained.returncode == 0, drained.stderr
        assert "c owns no service" in drained.stdout
        owner, epoch = cluster.owners()[SERVICE]
        assert owner in ("a", "b") and epoch == 3
        wait_until(lambda: runs(cluster, owner, 3) >= 2, 20, f"{owner} to run it at epoch 3")
        assert runs_after(cluster, 2, changed_at(cluster, 3)) == 0
        # When its owner freezes past its lease, with service work at epoch 3 in its queue
        frozen = cluster.running(owner)
        other = "b" if owner == "a" else "a"
        frozen.pause()
        sender = Celery(broker=broker_url, set_as_current=False)
        sender.conf.update(task_serializer="json", accept_content=["json"])
        sender.send_task(
            "failover.service_work", ([(SERVICE, 3)],), queue=f"node.{owner}", expires=300
        )
        wait_until(lambda: cluster.owners()[SERVICE] == (other, 4), 30, f"{other} to take it over")
        before = rejected(cluster, owner)
        frozen.resume()
        # Then its work at epoch 3 is refused, logged and counted, and nothing was written
        wait_until(lambda: f"rejected stale work on {SERVICE}" in frozen.log(), 30, "the rejection")
        wait_until(lambda: rejected(cluster, owner) > before, 10, "the rejection counted")
        wait_until(lambda: runs(cluster, other, 4) >= 2, 20, f"{other} to run it at epoch 4")
        assert runs_after(cluster, 3, changed_at(cluster, 4)) == 0
        # And the README handler's own write through its fence at epoch 3 is refused and counted
        incarnation = str(cluster.node_row(owner).incarnation)
        settings = load_settings(
            tmp_path / "failover.toml", database_url=database_url, broker_url=broker_url
        )
        fence = ServiceFence.of(settings, Fence(SERVICE, Identity(owner, incarnation), 3))
        counted = rejected(cluster, owner)
        with pytest.raises(StaleEpoch, match=f"owner {other}, epoch 4"):
            readme_handler(tmp_path)(fence)
        assert rejected(cluster, owner) == counted + 1
        assert runs_after(cluster, 3, changed_at(cluster, 4)) == 0
    finally:
        cluster.close()


def readme_handler(folder: Path):
    """The README's handler, imported from the module the test wrote."""
    spec = importlib.util.spec_from_file_location("team_jobs_readme", folder / "team_jobs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.roll_up
