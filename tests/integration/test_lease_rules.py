"""The two rules every fence reads, each one SQL function (revision 0014): "this incarnation's
lease holds" and "that incarnation is gone" (the takeover rule, outage rule included)."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

from sqlalchemy import text

from tests.support.registry import add_node, age_node
from workers.settings import Settings
from workers.stores.database import transaction

PRODUCT = Path(__file__).parents[2] / "workers"
INLINE_LEASE = re.compile(r"lease_timeout_s \* interval '1 second' [<>]")


def holds(settings: Settings, name: str) -> bool:
    with transaction(settings) as connection:
        return bool(
            connection.execute(
                text(
                    "SELECT failover_lease_holds(r) FROM server_registry AS r "
                    "WHERE node_name = :name"
                ),
                {"name": name},
            ).scalar_one()
        )


def gone(settings: Settings, incarnation: str, judge: str) -> bool:
    with transaction(settings) as connection:
        return bool(
            connection.execute(
                text("SELECT failover_incarnation_gone(CAST(:i AS uuid), CAST(:j AS uuid))"),
                {"i": incarnation, "j": judge},
            ).scalar_one()
        )


def test_a_lease_holds_while_renewed_within_it_and_not_once_stopped(settings: Settings) -> None:
    add_node(settings, "a", beat_age=0.5, lease=1.5)
    assert holds(settings, "a")
    age_node(settings, "a", beat_age=2.0, lease_age=100.0)
    assert not holds(settings, "a")
    age_node(settings, "a", beat_age=0.0, lease_age=100.0)
    with transaction(settings) as connection:
        connection.execute(
            text("UPDATE server_registry SET stopped_at = clock_timestamp() WHERE node_name = 'a'")
        )
    assert not holds(settings, "a")


def test_an_incarnation_is_gone_only_to_a_judge_whose_lease_holds(settings: Settings) -> None:
    a = add_node(settings, "a", beat_age=5.0, lease=1.5)
    b = add_node(settings, "b", beat_age=0.0, lease_age=100.0, lease=1.5)
    assert gone(settings, a.incarnation, b.incarnation)
    age_node(settings, "b", beat_age=5.0, lease_age=100.0)
    assert not gone(settings, a.incarnation, b.incarnation), "a judge without a lease judges"


def test_the_outage_rule_a_judge_back_from_its_own_gap_waits_a_whole_lease(
    settings: Settings,
) -> None:
    a = add_node(settings, "a", beat_age=5.0, lease=1.5)
    b = add_node(settings, "b", beat_age=0.0, lease_age=0.2, lease=1.5)
    assert not gone(settings, a.incarnation, b.incarnation), "judged before a whole lease"
    age_node(settings, "b", beat_age=0.0, lease_age=2.0)
    assert gone(settings, a.incarnation, b.incarnation)


def test_a_live_incarnation_is_not_gone_and_a_replaced_one_is(settings: Settings) -> None:
    a = add_node(settings, "a", beat_age=0.0, lease=1.5)
    b = add_node(settings, "b", beat_age=0.0, lease_age=100.0, lease=1.5)
    assert not gone(settings, a.incarnation, b.incarnation)
    assert gone(settings, str(uuid.uuid4()), b.incarnation), "a replaced row is gone"


def test_no_product_code_spells_the_lease_rule_itself() -> None:
    found = [
        f"{path.relative_to(PRODUCT.parent)}:{number}"
        for path in PRODUCT.rglob("*.py")
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if INLINE_LEASE.search(line)
    ]
    assert not found, f"call failover_lease_holds / failover_incarnation_gone instead: {found}"
