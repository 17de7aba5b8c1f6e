"""Commits that are never applied twice, nor reported lost when they were made.

Every write transaction inserts a marker row (a fresh UUID) into
``aiolmdb_commits`` and commits in the same round trip. If the connection
drops before the answer comes, the commit may or may not have happened (on
a failover, the standby may or may not have received it). The engine then
asks on a new connection (which reaches the new primary) by inserting the
same marker: the insert waits while the lost commit is still in flight on
that server, then either finds the marker (the commit happened: the call
succeeds, and is not applied again) or writes it (it did not, and now never
can: the work is run again, or reported not applied). Only when no
connection can be made within ``reconnect_timeout`` is the outcome reported
unknown (:class:`~aiolmdb.CommitUnknownError`).
"""

from __future__ import annotations

import asyncio
import enum
import uuid

import psycopg

from ...errors import CommitUnknownError, UnavailableError
from ..waiting import outlast_cancellation
from .connections import Connection, Connections
from .failures import Failure, failure_of, user_error
from .layout import Sql
from .views import run_statement

__all__ = [
    "CommitOutcome",
    "commit",
    "commit_settled",
    "new_marker",
    "settle_lost_commit",
]


class CommitOutcome(enum.Enum):
    """What became of a commit."""

    COMMITTED = "committed"
    #: Not applied (and now never will be): the work may be run again.
    NOT_APPLIED = "not applied"


def new_marker() -> str:
    """A fresh marker for one attempt of a write transaction."""
    return str(uuid.uuid4())


async def commit(conn: Connection, marker: str) -> None:
    """Commit the transaction open on ``conn`` with its marker, in one round trip.

    Raises what the driver raises: a lost connection here leaves the outcome
    to :func:`settle_lost_commit`.
    """
    await conn.execute(Sql.commit_with_marker(marker), prepare=False)


async def commit_settled(
    connections: Connections, conn: Connection, marker: str, what: str
) -> CommitOutcome:
    """Commit the transaction open on ``conn`` (``what``, in messages) with ``marker``,
    and give the connection back; whether the commit happened.

    A lost answer is settled (:func:`settle_lost_commit`): COMMITTED, or
    NOT_APPLIED (and now never applied). So is a cancellation of the caller while
    the commit is under way, before the cancellation goes on: nothing is left
    half-known. A conflict raises :class:`~aiolmdb.ConflictError`, a refusal
    aiolmdb's error, both with nothing applied.
    """
    try:
        await commit(conn, marker)
    except psycopg.Error as exc:
        failure = failure_of(exc)
        if failure is Failure.LOST:
            await connections.discard(conn, exc)
            return await settle_lost_commit(connections, marker, what, exc)
        await connections.put(conn)
        raise user_error(exc, failure, what) from exc
    except asyncio.CancelledError as cancelled:
        # Where the commit got to is the server's to say: settle it, whatever else
        # cancels this meanwhile, then let the cancellation go on.
        await connections.discard(conn, cancelled)
        settling = asyncio.ensure_future(settle_lost_commit(connections, marker, what, cancelled))
        await outlast_cancellation(settling)
        if not settling.cancelled():
            settling.exception()  # retrieved: the caller learns of its cancellation
        raise
    await connections.put(conn)
    return CommitOutcome.COMMITTED


async def settle_lost_commit(
    connections: Connections, marker: str, what: str, error: BaseException
) -> CommitOutcome:
    """Whether the commit of ``marker``, whose answer was lost (``error``), happened.

    Raises :class:`~aiolmdb.CommitUnknownError` when the server cannot be
    asked within ``reconnect_timeout``, or refuses the question (the claim
    waiting for the lost commit ran into the session's ``lock_timeout``).
    """

    async def claim(conn: Connection) -> CommitOutcome:
        claimed = await run_statement(conn, Sql.CLAIM_MARKER, (marker,))
        return CommitOutcome.NOT_APPLIED if claimed == 1 else CommitOutcome.COMMITTED

    def unknown(why: str) -> CommitUnknownError:
        return CommitUnknownError(
            f"{what}: the connection was lost while it committed ({error!r}), and PostgreSQL "
            f"at {connections.where} {why}: its outcome is unknown (it happened if "
            f"aiolmdb_commits holds the row {marker!r})"
        )

    try:
        return await connections.retrying(claim)
    except UnavailableError as exc:
        raise unknown("could not be asked since whether the commit happened") from exc
    except psycopg.Error as exc:
        # Not a lost connection (retrying makes those again): the server refused the claim.
        raise unknown(f"refused to say whether the commit happened ({exc})") from exc
