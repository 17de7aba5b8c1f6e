"""What a PostgreSQL error means for the transaction it broke, and the error users get."""

from __future__ import annotations

import enum

import psycopg
from psycopg import errors as pg_errors

from ...errors import AiolmdbError, ConflictError, ConnectionLostError

__all__ = ["Failure", "failure_of", "user_error"]


class Failure(enum.Enum):
    """How an error raised by the driver ended the transaction it happened in."""

    #: Serialization failure or deadlock: nothing applied; running it again may succeed.
    CONFLICT = "conflict"
    #: The connection is gone (or reaches a server that cannot write any more, after a
    #: failover): nothing applied, unless the commit was in flight.
    LOST = "lost"
    #: Anything else the server refused: the transaction cannot go on.
    REFUSED = "refused"


#: SQLSTATE classes after which the connection is of no more use: connection
#: exceptions, operator intervention (shutdown), system errors (disk, I/O).
_LOST_CLASSES = ("08", "57", "58")


def failure_of(exc: psycopg.Error) -> Failure:
    """What ``exc`` means for its transaction."""
    if isinstance(exc, pg_errors.SerializationFailure | pg_errors.DeadlockDetected):
        return Failure.CONFLICT
    sqlstate = exc.sqlstate
    if isinstance(exc, pg_errors.ReadOnlySqlTransaction):
        return Failure.LOST  # connected to a node that was demoted: look for the primary
    if sqlstate is None or sqlstate[:2] in _LOST_CLASSES:
        # No SQLSTATE: the driver's own error (the socket closed, the server gone).
        return Failure.LOST if isinstance(exc, psycopg.OperationalError) else Failure.REFUSED
    return Failure.REFUSED


def user_error(exc: psycopg.Error, failure: Failure, what: str) -> AiolmdbError:
    """The error to raise for ``exc`` (``failure``) in ``what`` (a transaction's label)."""
    detail = str(exc).strip() or type(exc).__name__
    if failure is Failure.CONFLICT:
        return ConflictError(
            f"{what} conflicted with a concurrent transaction and was not applied "
            f"(PostgreSQL: {detail}): run it again (env.transact does)"
        )
    if failure is Failure.LOST:
        return ConnectionLostError(
            f"{what} lost its connection before it committed, and was not applied "
            f"(PostgreSQL: {detail}): run it again (env.transact does)"
        )
    return AiolmdbError(f"{what} failed: PostgreSQL refused it: {detail}")
