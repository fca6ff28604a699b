"""Invariants 1 and 2 on real PostgreSQL: concurrent takeovers of one dead owner, one winner."""

from __future__ import annotations

import multiprocessing
import threading

from tests.support.registry import add_node, give, history, owner_and_epoch
from workers.decision.decide import Acquire, Policy
from workers.settings import Settings, load_settings
from workers.settings.process import Identity, new_incarnation
from workers.stores import ownership, store
from workers.stores.database import transaction

SERVICE = "folder_monitor"
CONTENDERS = 8


def _attempt(settings: Settings, me: Identity, epoch: int) -> str | None:
    action = Acquire(SERVICE, "dead", epoch, "takeover", "lease expired")
    with transaction(settings) as connection:
        return ownership.acquire(connection, me, action, f"node {me.name}", Policy())


def _dead_owner_and_contenders(
    settings: Settings, lease: float = 1.5
) -> tuple[list[Identity], int]:
    add_node(settings, "dead", beat_age=600)
    epoch = give(settings, SERVICE, "dead")
    contenders = [add_node(settings, f"n{i}", lease=lease) for i in range(CONTENDERS)]
    return contenders, epoch


def test_concurrent_takeovers_in_threads_have_exactly_one_winner(settings):
    # Given a dead owner and eight live nodes that all planned to take its service
    contenders, epoch = _dead_owner_and_contenders(settings)
    barrier = threading.Barrier(CONTENDERS)
    results: dict[str, str | None] = {}

    def contend(me: Identity) -> None:
        barrier.wait()
        results[me.name] = _attempt(settings, me, epoch)

    # When they all run the locked takeover at once
    threads = [threading.Thread(target=contend, args=(me,)) for me in contenders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    # Then exactly one won, the others saw the new owner, and one history row was written
    winners = [name for name, refusal in results.items() if refusal is None]
    assert len(winners) == 1
    owner, new_epoch = owner_and_epoch(settings, SERVICE)
    assert (owner, new_epoch) == (winners[0], epoch + 1)
    losers = [refusal for refusal in results.values() if refusal]
    assert all(f"owned by {owner} at epoch {epoch + 1}" in refusal for refusal in losers)
    assert history(settings, SERVICE)[-1] == ("dead", owner, epoch + 1, "takeover")
    assert len(history(settings, SERVICE)) == 2


def _contend_in_process(database_url: str, name: str, incarnation: str, epoch: int, start, out):
    settings = load_settings(database_url=database_url, database_timeout=2.0, lease_timeout=10.0)
    start.wait()
    out.put((name, _attempt(settings, Identity(name, incarnation), epoch)))


def test_concurrent_takeovers_in_processes_have_exactly_one_winner(settings, database_url):
    # (long leases: starting eight interpreters takes a while on two cores)
    contenders, epoch = _dead_owner_and_contenders(settings, lease=120)
    context = multiprocessing.get_context("spawn")
    start, out = context.Event(), context.Queue()
    processes = [
        context.Process(
            target=_contend_in_process,
            args=(database_url, me.name, me.incarnation, epoch, start, out),
        )
        for me in contenders
    ]
    for process in processes:
        process.start()
    start.set()
    results = dict(out.get(timeout=60) for _ in processes)
    for process in processes:
        process.join(timeout=30)

    winners = [name for name, refusal in results.items() if refusal is None]
    assert len(winners) == 1, results
    assert owner_and_epoch(settings, SERVICE) == (winners[0], epoch + 1)
    assert len(history(settings, SERVICE)) == 2


def test_takeover_is_refused_when_the_owner_renewed_after_it_was_planned(settings):
    # Given b planned to take a's service while a's lease looked expired
    owner = add_node(settings, "a", beat_age=60)
    epoch = give(settings, SERVICE, "a")
    taker = add_node(settings, "b")
    # When a renews its lease before the takeover task runs
    assert store.heartbeat(settings, owner, True, store.Latency()) is not None
    action = Acquire(SERVICE, "a", epoch, "takeover", "lease expired")
    with transaction(settings) as connection:
        refusal = ownership.acquire(connection, taker, action, "node b", Policy())
    # Then the locked re-check refuses, and nothing changed
    assert refusal is not None and "lease is fresh" in refusal
    assert owner_and_epoch(settings, SERVICE) == ("a", epoch)


def test_takeover_is_refused_to_a_node_whose_own_lease_lapsed(settings):
    add_node(settings, "a", beat_age=60)
    epoch = give(settings, SERVICE, "a")
    stale = add_node(settings, "b", beat_age=5)
    action = Acquire(SERVICE, "a", epoch, "takeover", "lease expired")
    with transaction(settings) as connection:
        refusal = ownership.acquire(connection, stale, action, "node b", Policy())
    assert refusal is not None and "own lease expired" in refusal
    assert owner_and_epoch(settings, SERVICE) == ("a", epoch)


def test_a_replaced_incarnation_cannot_take_over(settings):
    add_node(settings, "a", beat_age=60)
    epoch = give(settings, SERVICE, "a")
    add_node(settings, "b")
    ghost = Identity("b", new_incarnation())
    action = Acquire(SERVICE, "a", epoch, "takeover", "lease expired")
    with transaction(settings) as connection:
        refusal = ownership.acquire(connection, ghost, action, "node b", Policy())
    assert refusal == "this process is no longer the node's current incarnation"
