"""A node whose beat died takes nothing on while it exits: a move that reaches it is refused
(the database would still accept it: the node's lease is fresh for a while)."""

from __future__ import annotations

import pytest

from tests.support.registry import add_node, give, owner_and_epoch
from workers.fence import local_state
from workers.runtime import node
from workers.settings.process import adopt_node, current_settings


@pytest.fixture
def node_b(settings, monkeypatch):
    """This process as node b (fresh lease), a the owner of folder_monitor at epoch 1."""
    add_node(settings, "a")
    give(settings, "folder_monitor", "a")
    b = add_node(settings, "b")
    monkeypatch.setenv("FAILOVER_DATABASE_URL", str(settings.database_url))
    monkeypatch.setenv("FAILOVER_BROKER_URL", settings.broker_url)
    monkeypatch.setenv("FAILOVER_REGION", "r1")
    me = adopt_node("b", b.incarnation)
    yield me
    local_state.forget(me.incarnation)
    current_settings.cache_clear()


def test_a_node_whose_beat_stopped_refuses_a_move(settings, node_b):
    from workers.runtime.tasks import manual_failover

    # Given b's beat died (the mark it leaves for every process of the node)
    local_state.remember(node_b.incarnation, node.BEAT_STOPPED, 1.0)
    # When a move of folder_monitor reaches b
    outcome = manual_failover.run("folder_monitor", "operator@host", "try b")
    # Then b refuses it, and a still owns the service
    assert outcome["refusal"] == "its beat stopped: the node is exiting to be restarted"
    assert owner_and_epoch(settings, "folder_monitor") == ("a", 1)
