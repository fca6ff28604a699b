"""`failover metrics`: what Flower cannot know, for Prometheus, read from the database per scrape.

One small server for the whole cluster (run it anywhere that reaches the database): per
service its owner, whether that owner is live, its epoch and a planned handover in
progress, per node its lease and lease age, liveness and draining flag, and
counters of ownership changes by reason and of side effects the epoch fence rejected; and
what each service's status section exports (files waiting per folder, a custom service's
ticks), through `workers.services`.
Counters come from append-only data (the history table, a per-node counter), so they only
go up, as Prometheus expects.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from workers import services
from workers.errors import FailoverError
from workers.settings import Settings
from workers.stores import store
from workers.stores.database import transaction
from workers.stores.tables import ownership_history as history_t
from workers.stores.tables import server_registry as nodes_t
from workers.stores.tables import service_status as services_t

log = logging.getLogger(__name__)


class ClusterCollector(Collector):
    """Reads one snapshot per scrape and turns it into metric families."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("failover_database_up", "1 if the database answered this scrape")
        try:
            families = self._read()
        except FailoverError as error:
            log.warning("metrics: %s", error)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _read(self) -> list[Metric]:
        with transaction(self.settings) as connection:
            snapshot = store.read_snapshot(connection)
            changes = connection.execute(
                select(history_t.c.service_type, history_t.c.reason, func.count()).group_by(
                    history_t.c.service_type, history_t.c.reason
                )
            ).all()
            rows = connection.execute(select(nodes_t)).all()
            handovers = connection.execute(
                select(services_t).where(services_t.c.handover_since.is_not(None))
            ).all()
            running = {
                row.service_type: services.running_work(self.settings, row.service_type)(connection)
                for row in handovers
            }
            sections = services.status_sections(connection, self.settings)
        return [
            *_service_families(snapshot),
            *_node_families(snapshot),
            *_handover_families(snapshot, handovers, running),
            _counter(
                "failover_ownership_changes",
                "Changes of owner, by service and reason",
                ["service", "reason"],
                [([service, reason], count) for service, reason, count in changes],
            ),
            _counter(
                "failover_rejected_side_effects",
                "Side effects of service tasks rejected by the epoch fence, by node",
                ["node"],
                [([row.node_name], row.rejected_side_effects) for row in rows],
            ),
            _counter(
                "failover_restored_files",
                "Files put back into a hot folder: the database had lost their record, by node",
                ["node"],
                [([row.node_name], row.restored_files) for row in rows],
            ),
            *_latency_families(rows),
            *_server_families(rows),
            *_section_families(sections),
        ]


def _section_families(sections: dict[str, list[Any]]) -> list[Metric]:
    """Each service's numeric status fields that its section exports, as gauges."""
    families: list[Metric] = []
    for section in services.SECTIONS:
        for gauge in section.gauges:
            family = GaugeMetricFamily(gauge.metric, gauge.help, labels=[section.label])
            for row in sections.get(section.key, []):
                family.add_metric([str(row[section.label])], row[gauge.field])
            families.append(family)
    return families


LATENCIES = (
    ("db_round_trip_ms", "failover_node_db_round_trip_seconds", "The node's database round trip"),
    (
        "broker_round_trip_ms",
        "failover_node_broker_round_trip_seconds",
        "The node's broker round trip (one publish)",
    ),
    (
        "heartbeat_cycle_ms",
        "failover_node_heartbeat_cycle_seconds",
        "From the beat's scheduled tick to the renewed lease",
    ),
)


def _latency_families(rows: Sequence[Any]) -> list[Metric]:
    """What each node measured of its distance to the stores, as it last stored it."""
    families: list[Metric] = []
    for column, name, doc in LATENCIES:
        family = GaugeMetricFamily(name, doc, labels=["node", "region"])
        for row in rows:
            value = getattr(row, column)
            if value is not None:
                family.add_metric([row.node_name, row.region], value / 1000)
        families.append(family)
    return families


def _server_families(rows: Sequence[Any]) -> list[Metric]:
    """Which database server and broker each node last reached (an info-style gauge of 1),
    when that last changed (a Unix time: a store's own failover, as each node saw it), and
    whether the node's link to it is encrypted (1 for TLS, 0 in the clear)."""
    families: list[Metric] = []
    for store_name in ("database", "broker"):
        encrypted = GaugeMetricFamily(
            f"failover_node_{store_name}_encrypted",
            f"1 if the node's connections to the {store_name} are encrypted (TLS), else 0",
            labels=["node", "region"],
        )
        for row in rows:
            if getattr(row, f"{store_name}_encrypted") is not None:
                value = float(getattr(row, f"{store_name}_encrypted"))
                encrypted.add_metric([row.node_name, row.region], value)
        families.append(encrypted)
        server = GaugeMetricFamily(
            f"failover_node_{store_name}_server",
            f"1 for the {store_name} server the node last reached",
            labels=["node", "server"],
        )
        changed = GaugeMetricFamily(
            f"failover_node_{store_name}_changed_timestamp_seconds",
            f"When the node last found a different {store_name} server",
            labels=["node"],
        )
        for row in rows:
            if getattr(row, f"{store_name}_server"):
                server.add_metric([row.node_name, getattr(row, f"{store_name}_server")], 1)
            if getattr(row, f"{store_name}_changed_at"):
                moment = getattr(row, f"{store_name}_changed_at")
                changed.add_metric([row.node_name], moment.timestamp())
        families += [server, changed]
    return families


def _counter(name: str, doc: str, labels: list[str], samples: list[Any]) -> Metric:
    family = CounterMetricFamily(name, doc, labels=labels)
    for values, count in samples:
        family.add_metric(values, count)
    return family


def _service_families(snapshot: Any) -> list[Metric]:
    epoch = GaugeMetricFamily(
        "failover_service_epoch", "The service's fencing epoch", labels=["service"]
    )
    owner = GaugeMetricFamily(
        "failover_service_owner", "1 for the node that owns the service", labels=["service", "node"]
    )
    owner_live = GaugeMetricFamily(
        "failover_service_owner_live",
        "1 while the service has an owner whose lease is fresh",
        labels=["service"],
    )
    for service in snapshot.services:
        epoch.add_metric([service.name], service.epoch)
        node = snapshot.node_by_id(service.owner_id)
        owner.add_metric([service.name, node.name if node else ""], 1)
        owner_live.add_metric([service.name], int(bool(node and node.is_live(snapshot.now))))
    return [epoch, owner, owner_live]


def _handover_families(
    snapshot: Any, rows: Sequence[Any], running: dict[str, list[str] | None]
) -> list[Metric]:
    """A planned handover in progress: since when, the seconds left of its grace (negative
    once the grace is over and the service has still not moved: stuck), and how many runs
    it still waits for (where the database can tell)."""
    since = GaugeMetricFamily(
        "failover_service_handover_started_timestamp_seconds",
        "When the service's planned handover in progress started",
        labels=["service", "to"],
    )
    left = GaugeMetricFamily(
        "failover_service_handover_seconds_left",
        "Seconds left of the grace of the service's planned handover in progress",
        labels=["service", "to"],
    )
    waiting = GaugeMetricFamily(
        "failover_service_handover_running",
        "Runs the service's planned handover in progress still waits for",
        labels=["service", "to"],
    )
    for row in rows:
        values = [row.service_type, row.handover_to or ""]
        since.add_metric(values, row.handover_since.timestamp())
        if row.handover_until is not None:
            left.add_metric(values, (row.handover_until - snapshot.now).total_seconds())
        if running.get(row.service_type) is not None:
            waiting.add_metric(values, len(running[row.service_type] or ()))
    return [since, left, waiting]


def _node_families(snapshot: Any) -> list[Metric]:
    labels = ["node", "region"]
    age = GaugeMetricFamily(
        "failover_node_lease_age_seconds", "Seconds since the last heartbeat", labels=labels
    )
    live = GaugeMetricFamily(
        "failover_node_live", "1 while the node's lease is fresh", labels=labels
    )
    active = GaugeMetricFamily("failover_node_active", "The node's is_active flag", labels=labels)
    draining = GaugeMetricFamily("failover_node_draining", "1 while the node drains", labels=labels)
    lease = GaugeMetricFamily(
        "failover_node_lease_timeout_seconds",
        "The node's lease (its heartbeat keeps it)",
        labels=labels,
    )
    for node in snapshot.nodes:
        values = [node.name, node.region]
        lease.add_metric(values, node.lease_timeout)
        age.add_metric(values, (snapshot.now - node.last_heartbeat_at).total_seconds())
        live.add_metric(values, int(node.is_live(snapshot.now)))
        active.add_metric(values, int(node.is_active))
        draining.add_metric(values, int(node.draining))
    return [age, live, active, draining, lease]
