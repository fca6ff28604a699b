"""Property tests: random heartbeats, crashes, restarts, graceful stops and outages.

The model applies `decide` and `refusal_to_acquire` exactly as the SQL does (renewal,
marking with a re-check, a locked re-check before a takeover that may run late), and
checks after every step that the invariants hold.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from workers.decision.decide import Acquire, MarkInactive, Policy, decide, refusal_to_acquire
from workers.decision.placement import Placement
from workers.decision.snapshot import Node, Service, Snapshot

LEASE = 3.0
NAMES = ("a", "b", "c", "d")
REGIONS = {"a": "r1", "b": "r1", "c": "r2", "d": "r2"}
SERVICES = ("folder_monitor", "app_script")
T0 = datetime(2026, 1, 1, tzinfo=UTC)
FAILBACK_DWELL = 2.0
POLICY = Policy(
    cross_region_delay=1.0,
    placements={
        "app_script": Placement(
            preferred_nodes=("c",), failback=True, failback_dwell=FAILBACK_DWELL
        )
    },
)


@dataclass
class Process:
    running: bool = False
    incarnation: int = 0


class ClusterModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.rows: dict[str, Node] = {}
        self.processes = {name: Process() for name in NAMES}
        self.services = {name: Service(name, None, 0) for name in SERVICES}
        self.pending: list[tuple[str, int, Acquire]] = []
        self.epochs_seen = {name: 0 for name in SERVICES}

    # -- helpers mirroring the SQL of workers/stores/store.py ---------------------------------
    def at(self, seconds: float) -> datetime:
        return T0 + timedelta(seconds=seconds)

    def snapshot(self) -> Snapshot:
        return Snapshot(self.at(self.now), tuple(self.rows.values()), tuple(self.services.values()))

    def node_id(self, name: str) -> int:
        return NAMES.index(name) + 1

    def renew(self, name: str) -> None:
        row = self.rows[name]
        lapsed = row.lease_left(self.at(self.now)) <= 0 or not row.is_active
        started = self.at(self.now) if lapsed else row.lease_started_at
        self.rows[name] = replace(
            row, last_heartbeat_at=self.at(self.now), lease_started_at=started, is_active=True
        )

    def acquire(self, name: str, action: Acquire) -> None:
        refusal = refusal_to_acquire(self.snapshot(), name, action, POLICY)
        if refusal:
            return
        self.check_takeover_is_safe(name, action)
        service = self.services[action.service]
        self.services[action.service] = replace(
            service, owner_id=self.node_id(name), epoch=service.epoch + 1
        )

    def check_takeover_is_safe(self, taker: str, action: Acquire) -> None:
        if action.from_node is None:
            return
        me = self.rows[taker]
        if action.reason == "failback":
            assert taker == "c", "failback to a node that is not the preferred one"
            dwell = (self.at(self.now) - me.lease_started_at).total_seconds()
            assert dwell >= FAILBACK_DWELL, "failback before the dwell time"
            return
        old = self.rows[action.from_node]
        if old.stopped_at is not None:
            return
        start = max(old.last_heartbeat_at, me.lease_started_at)
        waited = (self.at(self.now) - start).total_seconds()
        assert waited > old.lease_timeout, "took a service before the owner's lease expired"

    # -- rules ---------------------------------------------------------------------------
    @rule(dt=st.floats(min_value=0.0, max_value=2.0))
    def time_passes(self, dt: float) -> None:
        self.now += dt

    @rule(dt=st.floats(min_value=3.0, max_value=20.0))
    def outage(self, dt: float) -> None:
        """Broker or database away: nobody beats, every lease may go stale."""
        self.now += dt

    @rule(name=st.sampled_from(NAMES))
    def start(self, name: str) -> None:
        process = self.processes[name]
        row = self.rows.get(name)
        if process.running or (row and row.is_live(self.at(self.now))):
            return
        process.running = True
        process.incarnation += 1
        now = self.at(self.now)
        self.rows[name] = Node(
            self.node_id(name),
            name,
            REGIONS[name],
            True,
            now,
            now,
            LEASE,
            incarnation=str(process.incarnation),
        )

    @rule(name=st.sampled_from(NAMES))
    def heartbeat(self, name: str) -> None:
        if not self.processes[name].running:
            return
        self.renew(name)
        decision = decide(self.snapshot(), name, POLICY)
        for action in decision.actions:
            if isinstance(action, MarkInactive):
                row = self.rows[action.node]
                if row.last_heartbeat_at == action.last_heartbeat_at:
                    self.rows[action.node] = replace(row, is_active=False)
            elif isinstance(action, Acquire):
                self.pending.append((name, self.processes[name].incarnation, action))

    @rule(skip=st.sampled_from(NAMES))
    def everyone_beats_but(self, skip: str) -> None:
        """A round of heartbeats in which one node (paused, partitioned, dead) stays silent."""
        for name in NAMES:
            if name != skip:
                self.heartbeat(name)

    @precondition(lambda self: self.pending)
    @rule(index=st.integers(min_value=0), run=st.booleans())
    def takeover_task(self, index: int, run: bool) -> None:
        """A queued takeover runs (maybe late) or expires; a dead incarnation's never runs."""
        name, incarnation, action = self.pending.pop(index % len(self.pending))
        process = self.processes[name]
        if run and process.running and process.incarnation == incarnation:
            self.acquire(name, action)

    @rule(name=st.sampled_from(NAMES))
    def crash(self, name: str) -> None:
        self.processes[name].running = False

    @rule(name=st.sampled_from(NAMES))
    def graceful_stop(self, name: str) -> None:
        if not self.processes[name].running:
            return
        self.processes[name].running = False
        now = self.at(self.now)
        self.rows[name] = replace(self.rows[name], stopped_at=now, is_active=False)
        for service in list(self.services.values()):
            if service.owner_id == self.node_id(name):
                self.services[service.name] = replace(
                    service, owner_id=None, epoch=service.epoch + 1
                )

    # -- invariants ---------------------------------------------------------------------
    @invariant()
    def epochs_never_decrease(self) -> None:
        for name, service in self.services.items():
            assert service.epoch >= self.epochs_seen[name]
            self.epochs_seen[name] = service.epoch

    @invariant()
    def one_owner_that_exists(self) -> None:
        for service in self.services.values():
            owners = [n for n in self.rows.values() if n.id == service.owner_id]
            assert len(owners) <= 1

    def teardown(self) -> None:
        """Liveness: once things calm down, every service ends up with a running owner."""
        running = [n for n, p in self.processes.items() if p.running]
        if not running:
            return
        for _ in range(12):
            self.now += 0.5
            for name in running:
                self.heartbeat(name)
                while self.pending:
                    self.takeover_task(0, True)
        for service in self.services.values():
            owner = next(n for n in self.rows.values() if n.id == service.owner_id)
            assert self.processes[owner.name].running, f"{service.name} owned by a dead node"


TestClusterModel = ClusterModel.TestCase
TestClusterModel.settings = settings(max_examples=300, stateful_step_count=50, deadline=None)


def test_a_takeover_planned_while_the_owner_was_paused_is_refused_once_it_wakes():
    # Given a owns both services and b runs beside it
    model = ClusterModel()
    model.start("a")
    model.heartbeat("a")
    while model.pending:
        model.takeover_task(0, True)
    model.start("b")
    # When a stays silent (paused) long enough for b to plan a takeover...
    for _ in range(3):
        model.time_passes(1.5)
        model.heartbeat("b")
    assert model.pending
    # ...but a wakes and beats before the takeover task runs
    model.heartbeat("a")
    while model.pending:
        model.takeover_task(0, True)
    # Then the locked re-check refuses it: a keeps its services at the same epoch
    assert {s.owner_id for s in model.services.values()} == {model.node_id("a")}
    assert {s.epoch for s in model.services.values()} == {1}
