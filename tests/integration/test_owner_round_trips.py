"""Invariant 11 for the owner's work: each path costs a small, fixed number of round trips
(issue 18), counted on the wire by the delay proxy as the heartbeat's are."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
from sqlalchemy import text

from tests.support.cluster import wait_until
from tests.support.delay_proxy import DelayProxy
from tests.support.folders import owner as folder_owner
from tests.support.folders import with_folder
from tests.support.handlers import handled
from tests.support.registry import add_node, give
from workers.errors import HandingOver, StaleEpoch
from workers.fence.fencing import Fence, fenced_round_trip, record_ticks_with
from workers.services import app_script, folder_monitor
from workers.services.app_script import AppScriptService
from workers.settings import ScriptSettings, Settings
from workers.stores.database import transaction

T = TypeVar("T")


def test_a_fenced_message_commits_under_its_fence_and_is_refused_whole_without_it(settings):
    a = add_node(settings, "a")
    b = add_node(settings, "b")
    epoch = give(settings, "app_script", "a")
    tick = ("INSERT INTO script_schedule (script, last_due_at) VALUES (:n, now())", {"n": "x"})
    # Given a owns app_script: its fenced message commits
    assert fenced_round_trip(settings, Fence("app_script", a, epoch), [tick]) == [[]]
    # When b (not the owner), or a at an older epoch, sends one: refused, nothing written
    for fence in (Fence("app_script", b, epoch), Fence("app_script", a, epoch - 1)):
        with pytest.raises(StaleEpoch, match="is not the owner of app_script"):
            fenced_round_trip(settings, fence, [(tick[0], {"n": "y"})])
    # And a start is refused while the service hands over; the plain fence still holds
    with transaction(settings) as connection:
        connection.execute(
            text("UPDATE service_status SET handover_to = 'b', handover_since = now() "
                 "WHERE service_type = 'app_script'")
        )  # fmt: skip
    with pytest.raises(HandingOver, match="handing over to b"):
        fenced_round_trip(settings, Fence("app_script", a, epoch, starting=True), [])
    assert fenced_round_trip(settings, Fence("app_script", a, epoch), []) == []
    with transaction(settings) as connection:
        written = connection.execute(text("SELECT script FROM script_schedule")).scalars().all()
    assert written == ["x"]


def trips(proxy: DelayProxy, action: Callable[[], T]) -> tuple[int, T]:
    """The database round trips `action` costs on an open connection, and its result."""
    proxy.reset_counts()
    result = action()
    return proxy.round_trips, result


def warm(settings: Settings) -> None:
    """Open the work connection first: a far node keeps it open, so it is not counted."""
    with transaction(settings) as connection:
        connection.execute(text("SELECT 1"))


def test_each_folder_monitor_path_costs_a_fixed_few_round_trips(counted, tmp_path, handler_log):
    settings, proxy = counted
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    settings = with_folder(settings.model_copy(update={"folder_batch_size": 1}), inbox)
    folder = settings.folders()[0]
    fence = folder_owner(settings)
    warm(settings)
    sent: list[list[int]] = []
    scan = lambda: folder_monitor.scan(settings, fence, lambda _name, ids: sent.append(ids))  # noqa: E731
    scan()
    # A scan that finds nothing new: one round trip
    assert trips(proxy, scan)[0] == SCAN_NOTHING_NEW
    # A scan that claims three files (and sends their batches)
    for name in ("a.dat", "b.dat", "c.dat"):
        (inbox / name).write_text(name)
    assert trips(proxy, scan)[0] == SCAN_CLAIMS

    # A batch, from its marks to its outcomes, and the next batches sent after it
    def batch() -> None:
        folder_monitor.handle_files(settings, folder, sent.pop(0), fence)
        folder_monitor.dispatch(settings, folder, fence, lambda _n, ids: sent.append(ids))

    assert trips(proxy, batch)[0] == BATCH
    assert list(handled(handler_log).values()) == [1]


def test_each_script_path_costs_a_fixed_few_round_trips(counted, tmp_path):
    settings, proxy = counted
    script = ScriptSettings(argv=[sys.executable, "-c", "pass"], interval=1)
    settings = settings.model_copy(update={"scripts": {"tick": script}})
    fence = Fence("app_script", add_node(settings, "a", lease=30), 0)
    fence = Fence("app_script", fence.me, give(settings, "app_script", "a"))
    warm(settings)
    service = AppScriptService()
    queued: list[tuple[Any, ...]] = []
    sender = Queued(queued)
    service.work(settings, fence, sender)  # the first sight of a script sets its schedule
    time.sleep(1.1)
    # A beat with a slot due: the run is taken and sent
    count, _ = trips(proxy, lambda: service.work(settings, fence, sender))
    assert count == SCRIPT_DUE and len(queued) == 1
    # The run, from its start (recorded with the take, under the fence) to its end
    _task, (name, run_id, _epoch) = queued.pop()
    count, result = trips(proxy, lambda: app_script.run_recorded(settings, name, fence, run_id))
    assert count == SCRIPT_RUN and result.status == "succeeded"
    # A beat with nothing due
    assert trips(proxy, lambda: service.work(settings, fence, sender))[0] == SCRIPT_NOTHING_DUE
    # A beat of the service work as the owner runs it: the ticks read the schedules in
    # their own round trip, and the take of a due slot costs one more

    def beat() -> None:
        _refusals, found = record_ticks_with(
            settings, fence.me, [("app_script", fence.epoch)], [app_script.SCHEDULES_READ]
        )
        app_script.read_at_tick(fence.me.incarnation, found[0])
        service.work(settings, fence, sender)

    wait_until(
        lambda: app_script.schedule.due_slots(
            settings, app_script.schedule.read_schedules(settings)
        ),
        5,
        "a slot",
    )
    assert trips(proxy, beat)[0] == TICKS_AND_DUE_SCRIPTS and len(queued) == 1
    _task, (name, run_id, _epoch) = queued.pop()
    app_script.run_recorded(settings, name, fence, run_id)
    # An on-demand run, from its request to its end
    count, outcome = trips(proxy, lambda: app_script.run_now(settings, "tick", fence))
    assert count == RUN_NOW and outcome["status"] == "succeeded"


class Queued:
    """A `Sender` that keeps what the service would have sent."""

    node = "a"

    def __init__(self, queued: list[tuple[Any, ...]]) -> None:
        self.queued = queued

    def to_node(self, task: str, args: tuple[Any, ...], expires: float) -> None:
        self.queued.append((task, args))

    def to_queue(self, task: str, args: tuple[Any, ...], queue: str, expires: float) -> None:
        self.queued.append((task, args))

    def here(self, task: str, args: tuple[Any, ...]) -> None:
        self.queued.append((task, args))


SCAN_NOTHING_NEW = 1
SCAN_CLAIMS = 1
BATCH = 3
SCRIPT_DUE = 2
SCRIPT_RUN = 1
SCRIPT_NOTHING_DUE = 1
RUN_NOW = 2
TICKS_AND_DUE_SCRIPTS = 2
