"""The pg_auto_failover cluster of the failover tests, tested with plain psycopg.

One cluster serves the module; the test that kills its primary comes last. Like the
other tests that need PostgreSQL, they are skipped with ``AIOLMDB_TEST_POSTGRES=0``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from helpers.autofailover import (
    PRIMARY_STATES,
    ClusterError,
    FailoverCluster,
    Health,
    NodeState,
    unavailable,
)
from helpers.postgres_fixtures import SWITCH

WHY_NOT = f"{SWITCH}=0" if os.environ.get(SWITCH) == "0" else unavailable()
pytestmark = [pytest.mark.failover, pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")]

#: Bound on a failover: measured at 7-10 s here, with the monitor's shortened timeouts.
FAILOVER_TIMEOUT = 60.0
#: Bound on the standby replaying what the primary acknowledged.
REPLAY_TIMEOUT = 10.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[FailoverCluster]:
    with FailoverCluster() as cluster:
        yield cluster


def one(conn: psycopg.Connection[Any], query: str) -> Any:
    """The single value ``query`` returns."""
    row = conn.execute(query).fetchone()
    assert row is not None, query
    return row[0]


def test_one_node_is_primary_and_the_other_its_synchronous_standby(
    cluster: FailoverCluster,
) -> None:
    first, second = cluster.nodes
    assert (cluster.primary(), cluster.secondary()) == (first, second)
    by_name = {status.name: status for status in cluster.state()}
    assert {name: (s.reported, s.assigned, s.health) for name, s in by_name.items()} == {
        "node1": (NodeState.PRIMARY, NodeState.PRIMARY, Health.GOOD),
        "node2": (NodeState.SECONDARY, NodeState.SECONDARY, Health.GOOD),
    }
    standby = f"pgautofailover_standby_{by_name['node2'].node_id}"
    with psycopg.connect(first.url) as conn:
        assert one(conn, "SHOW synchronous_standby_names") == f"ANY 1 ({standby})"
        assert one(conn, "SHOW synchronous_commit") == "on"
        replication = conn.execute(
            "SELECT application_name, state, sync_state FROM pg_stat_replication"
        ).fetchall()
    assert replication == [(standby, "streaming", "quorum")]


def test_the_url_reaches_the_primary_and_its_commits_reach_the_standby(
    cluster: FailoverCluster,
) -> None:
    primary, standby = cluster.primary(), cluster.secondary()
    with psycopg.connect(cluster.url, autocommit=True) as conn:
        assert one(conn, "SELECT inet_server_port()") == primary.port
        conn.execute("CREATE TABLE replicated (id int PRIMARY KEY)")
        for i in range(100):
            conn.execute("INSERT INTO replicated VALUES (%s)", (i,))
    with psycopg.connect(standby.url, autocommit=True) as conn:
        assert one(conn, "SELECT pg_is_in_recovery()") is True
        # The standby has each commit before the primary acknowledges it, but replays
        # it a little later.
        deadline = time.monotonic() + REPLAY_TIMEOUT
        while one(conn, "SELECT count(*) FROM replicated") < 100:
            assert time.monotonic() < deadline, "the standby did not replay 100 commits"
            time.sleep(0.05)
        ids = [row[0] for row in conn.execute("SELECT id FROM replicated ORDER BY id")]
    assert ids == list(range(100))


def test_waiting_for_a_failover_needs_a_killed_primary(cluster: FailoverCluster) -> None:
    with pytest.raises(
        ClusterError, match=r"^no node has been killed: call kill_primary\(\) first$"
    ):
        cluster.wait_failover(1.0)
    assert cluster.killed is None


def test_after_the_primary_is_killed_the_url_reaches_the_promoted_node(
    cluster: FailoverCluster,
) -> None:
    old, new = cluster.primary(), cluster.secondary()
    with psycopg.connect(cluster.url, autocommit=True) as conn:
        conn.execute("CREATE TABLE committed (id int PRIMARY KEY)")
        for i in range(200):
            conn.execute("INSERT INTO committed VALUES (%s)", (i,))

    assert cluster.kill_primary() == old
    assert cluster.killed == old
    with pytest.raises(psycopg.OperationalError, match="Connection refused"):
        psycopg.connect(old.url)
    cluster.wait_failover(FAILOVER_TIMEOUT)

    assert cluster.primary() == new
    old_status = next(status for status in cluster.state() if status.name == old.name)
    assert not old_status.settled_in(PRIMARY_STATES)
    with psycopg.connect(cluster.url, autocommit=True) as conn:
        assert one(conn, "SELECT inet_server_port()") == new.port
        assert one(conn, "SELECT pg_is_in_recovery()") is False
        ids = [row[0] for row in conn.execute("SELECT id FROM committed ORDER BY id")]
        assert ids == list(range(200))
        conn.execute("INSERT INTO committed VALUES (200)")
        assert one(conn, "SELECT max(id) FROM committed") == 200
