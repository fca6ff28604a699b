"""The replicated-store harness itself, on real servers: PostgreSQL primary and standby
with pg_rewind, and Redis behind three sentinels, each failing over as the e2e tests need."""

from __future__ import annotations

import pytest
from kombu import Connection
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from tests.support.replicas import postgres_pair, redis_sentinels

pytestmark = pytest.mark.timeout(180)

ROWS = 50


def test_synchronous_pair_promotes_the_standby_with_every_commit_and_rejoins() -> None:
    with postgres_pair(synchronous=True) as pair:
        pair.create_database("harness")
        engine = create_engine(pair.url("harness"), poolclass=NullPool)
        try:
            # Given rows committed one by one through the multi-host URL
            with engine.begin() as connection:
                connection.execute(text("CREATE TABLE written (n int PRIMARY KEY)"))
            for n in range(ROWS):
                with engine.begin() as connection:
                    connection.execute(text("INSERT INTO written VALUES (:n)"), {"n": n})
            # When the primary crashes and the standby is promoted
            killed = pair.kill_primary()
            writable = pair.promote_standby()
            # Then the same URL reaches the new primary, which has every committed row
            assert pair.primary.name == "db2"
            with engine.connect() as connection:
                assert connection.execute(text("SELECT inet_server_port()")).scalar_one() == (
                    pair.primary.port
                )
                rows = connection.execute(text("SELECT n FROM written ORDER BY n")).scalars()
                assert list(rows) == list(range(ROWS))
            # And the old primary rejoins as a standby, while writes land on the new primary
            pair.rejoin_old_primary()
            assert pair.standby.name == "db1" and pair.is_in_recovery(pair.standby)
            with engine.begin() as connection:
                connection.execute(text("INSERT INTO written VALUES (:n)"), {"n": ROWS})
            count = "SELECT count(*) FROM written"
            assert pair.query(pair.primary, count, database="harness") == [(ROWS + 1,)]
            print(f"PostgreSQL: kill to writable standby {writable - killed:.2f} s")
        finally:
            engine.dispose()


def test_sentinels_promote_the_replica_and_kombu_follows_the_new_master() -> None:
    with redis_sentinels() as group:
        # Given a key written to the master and acknowledged by its replica
        before = group.master_address()
        with group.redis_for_master(1) as client:
            client.set("written", "before")
            assert client.wait(1, 2000) == 1
        # When the master is killed
        killed = group.kill_master()
        promoted = group.wait_promoted(30)
        # Then the sentinels name the replica, which kept the key
        assert group.master_address() != before
        with group.redis_for_master(1) as client:
            assert client.get("written") == b"before"
        # And kombu, through the three sentinels, queues on the new master's database 1
        options = {"master_name": group.master_name}
        with Connection(group.broker_url(1), transport_options=options) as connection:
            queue = connection.SimpleQueue("harness")
            try:
                queue.put({"n": 1})
                with group.redis_for_master(1) as client:
                    assert client.llen("harness") == 1
                message = queue.get(timeout=5)
                assert message.payload == {"n": 1}
                message.ack()
            finally:
                queue.close()
        print(f"Redis: kill to promoted replica {promoted - killed:.2f} s")
