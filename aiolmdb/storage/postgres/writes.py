"""One auto-commit write: ``fn(view)`` in a SERIALIZABLE transaction of its own.

The caller's cancellation before the commit leaves nothing applied; a commit
sent is seen through (its outcome settled) before the cancellation is raised.
Run again (``fn`` may run more than once, as on every engine) when it
conflicts, up to :data:`CONFLICT_ATTEMPTS` times; when the connection is
found dead before the commit, for up to ``reconnect_timeout`` seconds; and
when a commit's answer was lost but the commit did not happen
(:mod:`.commits`). Never applied twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

import psycopg

from ...errors import ConflictError, UnavailableError
from ..base import WriteView
from ..waiting import backoff
from .bridge import run_bridged
from .commits import CommitOutcome, commit_settled, new_marker
from .connections import Connections
from .failures import Failure, failure_of, user_error
from .layout import Sql
from .views import PostgresWriteView

__all__ = ["CONFLICT_ATTEMPTS", "run_write"]

R = TypeVar("R")

#: How many times an auto-commit write runs when it conflicts, at most; then
#: :class:`~aiolmdb.ConflictError`.
CONFLICT_ATTEMPTS = 32


async def run_write(connections: Connections, fn: Callable[[WriteView], R], what: str) -> R:
    """``fn(view)`` in a write transaction of its own, committed; its result.

    ``what`` names the write in messages.
    """
    deadline = asyncio.get_running_loop().time() + connections.reconnect_timeout
    conflicts = 0
    attempt = 0
    while True:
        attempt += 1
        if attempt > 1:
            await asyncio.sleep(backoff(attempt - 1))
        conn = await connections.begin(Sql.BEGIN_WRITE)
        marker = new_marker()
        try:
            result = await run_bridged(fn, PostgresWriteView(conn))
        except psycopg.Error as exc:
            failure = failure_of(exc)
            if failure is Failure.LOST:
                await connections.discard(conn, exc)
                check_deadline(connections, deadline, what, exc)
                continue
            await connections.put(conn)
            if failure is Failure.CONFLICT:
                conflicts += 1
                if conflicts < CONFLICT_ATTEMPTS:
                    continue
                raise user_error(exc, failure, f"{what} ({conflicts} attempts)") from exc
            raise user_error(exc, failure, what) from exc
        except BaseException:  # fn raised, or the caller was cancelled: nothing applied
            await connections.put(conn)
            raise
        try:
            outcome = await commit_settled(connections, conn, marker, what)
        except ConflictError as exc:
            conflicts += 1
            if conflicts < CONFLICT_ATTEMPTS:
                continue
            raise ConflictError(f"{exc} ({conflicts} attempts)") from exc
        if outcome is CommitOutcome.COMMITTED:
            return result


def check_deadline(
    connections: Connections, deadline: float, what: str, exc: BaseException
) -> None:
    """Raise :class:`~aiolmdb.UnavailableError` once connections kept failing past ``deadline``."""
    if asyncio.get_running_loop().time() >= deadline:
        raise UnavailableError(
            f"{what} could not be applied: the connection to PostgreSQL at "
            f"{connections.where} kept failing for "
            f"{connections.reconnect_timeout:g} s (reconnect_timeout): {exc}"
        ) from exc
