"""Run code in a forked child of the test process, and read back what it reports."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable

__all__ = ["in_forked_child"]


def _reap(pid: int, block: bool = False) -> int | None:
    waited, status = os.waitpid(pid, 0 if block else os.WNOHANG)
    return status if waited else None


async def in_forked_child(child: Callable[[], list[str] | Awaitable[list[str]]]) -> list[str]:
    """Fork; the child runs ``child()`` and reports its words through a pipe.

    ``child`` runs at once in the child, inside the caller's task (so in its
    context); an awaitable it returns runs in an event loop of the child's own.
    """
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report through the pipe, then leave at once
        code = 1
        try:
            os.close(read_fd)
            report = child()
            if not isinstance(report, list):
                report = asyncio.run(_awaited(report))
            os.write(write_fd, " ".join(report).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    status: int | None = None
    try:
        deadline = time.monotonic() + 20
        while status is None and time.monotonic() < deadline:
            status = _reap(pid)
            await asyncio.sleep(0.01)
        assert status is not None, "the forked child did not finish"
        assert os.waitstatus_to_exitcode(status) == 0
        with os.fdopen(read_fd, "rb") as reader:
            return reader.read().decode().split()
    finally:
        if status is None:
            os.kill(pid, 9)
            _reap(pid, block=True)


async def _awaited(aw: Awaitable[list[str]]) -> list[str]:
    return await aw
