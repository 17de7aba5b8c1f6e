"""A write session's stack of savepoints, and what it refuses (shared by the engines)."""

from __future__ import annotations

import itertools
from typing import Generic, TypeVar

from ..errors import TransactionError

__all__ = ["Savepoints"]

T = TypeVar("T")


class Savepoints(Generic[T]):
    """The transaction (level 0) and its open savepoints, innermost last, each with what
    the engine keeps for it (``T``: an image to undo with, nothing, ...).

    ``label`` names the session's transaction in messages.
    """

    def __init__(self, label: str) -> None:
        self.label = label
        self._stack: list[tuple[int, T]] = []
        self._ids = itertools.count(1)
        # Kept rather than counted: every call made in a session asks for it.
        self._depth = 0

    def begin(self, root: T) -> None:
        """The transaction began: level 0 holds ``root``."""
        self._stack = [(0, root)]
        self._depth = 0

    @property
    def depth(self) -> int:
        """How many savepoints are open."""
        return self._depth

    @property
    def ids(self) -> list[int]:
        """Ids of the open savepoints, innermost last."""
        return [savepoint for savepoint, _ in self._stack[1:]]

    def require_innermost(self, level: int) -> None:
        """Refuse a call made in ``level`` unless it is the innermost level open."""
        if self._stack and self._stack[-1][0] == level:
            return
        where = "the transaction" if level == 0 else f"savepoint {level}"
        if level != 0 and level not in self.ids:
            raise TransactionError(f"{self.label}: {where} this call was made in has ended")
        raise TransactionError(
            f"{self.label}: a savepoint is open inside {where}, where this call was made: "
            "make calls through it (tasks sharing a transaction cannot each hold a "
            "savepoint at once)"
        )

    def push(self, kept: T) -> int:
        """Open a savepoint keeping ``kept``; its id."""
        savepoint = next(self._ids)
        self._stack.append((savepoint, kept))
        self._depth += 1
        return savepoint

    def require_releasable(self, savepoint: int) -> None:
        """Refuse to release ``savepoint`` unless it is the innermost open one."""
        if savepoint == 0 or self._stack[-1][0] != savepoint:
            state = "is not the innermost" if savepoint in self.ids else "is not open"
            raise TransactionError(
                f"{self.label}: cannot release savepoint {savepoint}: it {state}"
            )

    def pop(self) -> T:
        """Close the innermost savepoint; what it kept."""
        kept = self._stack.pop()[1]
        self._depth = max(0, len(self._stack) - 1)
        return kept

    def above(self, savepoint: int) -> list[T]:
        """Close every savepoint opened inside ``savepoint`` (innermost first); what they kept."""
        level = self.ids.index(savepoint) + 1
        closed: list[T] = []
        while len(self._stack) > level + 1:
            closed.append(self._stack.pop()[1])
        self._depth = level
        return closed

    def clear(self) -> list[T]:
        """Forget every level, the transaction's included (innermost first); what they kept."""
        kept = [item for _, item in reversed(self._stack)]
        self._stack = []
        self._depth = 0
        return kept
