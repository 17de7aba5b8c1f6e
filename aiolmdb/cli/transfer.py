"""``dump`` and ``load``: a database's records as JSON Lines, out and back in.

A line is ``{"key": ..., "value": ...}``, both in the console's JSON form
(see :mod:`.render`). A load writes its input in chunks, each chunk one write
transaction that also records, in aiolmdb's own database, how many lines of
that input are loaded; a load run again on the same input (the same bytes)
skips them and goes on. A killed load, run again, so ends with exactly the
input loaded, each line written once. Through a collection, every chunk
keeps the indexes in step (its writes are the collection's).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

from ..database import INTERNAL_DATABASE, AsyncDatabase
from ..errors import AiolmdbError, DecodeError
from .errors import CliError, ExitCode
from .inspect import scan_records
from .render import from_json

__all__ = ["LOADS_DATABASE", "LOAD_CHUNK", "LoadResult", "dump_records", "load_records"]

#: Input lines written per write transaction by default.
LOAD_CHUNK = 1_000
#: Where loads record how far they got: key ``<database>\\0<sha256 of the input>``.
LOADS_DATABASE = f"{INTERNAL_DATABASE}/cli/loads"

#: ``progress(lines_done, lines_total)``, after each chunk.
LoadProgress = Callable[[int, int], None]


async def dump_records(db: AsyncDatabase[Any, Any], out: TextIO) -> int:
    """Write every record of ``db`` to ``out`` as JSON Lines (one read snapshot); how
    many."""
    count = 0
    async for key, value in scan_records(db):
        out.write(json.dumps({"key": key, "value": value}, ensure_ascii=False) + "\n")
        count += 1
    return count


@dataclasses.dataclass(frozen=True)
class LoadResult:
    """What a load did."""

    #: Input lines (records) in the file.
    total: int
    #: Lines a load cut short had loaded already, skipped this time.
    skipped: int
    #: Lines written by this run.
    written: int


def _fingerprint(path: Path) -> tuple[str, int]:
    """The SHA-256 of the file, and how many records (non-blank lines) it holds."""
    digest = hashlib.sha256()
    lines = 0
    with path.open("rb") as f:
        for line in f:
            digest.update(line)
            if line.strip():
                lines += 1
    return digest.hexdigest(), lines


def _parse(db: AsyncDatabase[Any, Any], path: Path, number: int, line: str) -> tuple[Any, Any]:
    where = f"{path}:{number}"
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise CliError(f"{where}: not JSON: {exc}", ExitCode.PROBLEMS) from exc
    if not isinstance(record, dict) or set(record) != {"key", "value"}:
        raise CliError(
            f'{where}: expected an object {{"key": ..., "value": ...}}, got {line.strip()[:80]}',
            ExitCode.PROBLEMS,
        )
    try:
        return from_json(record["key"], db.key_coder), from_json(record["value"], db.value_coder)
    except ValueError as exc:
        raise CliError(
            f"{where}: the record does not fit database {db.label} (key coder "
            f"{db.key_coder!r}, value coder {db.value_coder!r}): {exc}",
            ExitCode.PROBLEMS,
        ) from exc


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """The non-blank lines of ``path`` with their line numbers (from 1)."""
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                yield number, line


async def load_records(
    db: AsyncDatabase[Any, Any],
    path: Path,
    *,
    chunk: int = LOAD_CHUNK,
    progress: LoadProgress | None = None,
) -> LoadResult:
    """Write the records of the JSON Lines file ``path`` into ``db``, ``chunk`` lines per
    write transaction, resuming where a load of the same input stopped.

    Existing keys are overwritten. ``progress(done, total)`` is called after
    each chunk. A line that is not a record of ``db`` stops the load with
    :class:`CliError`, after the chunks before it.
    """
    if chunk < 1:
        raise CliError(f"--chunk must be 1 or more, got {chunk}", ExitCode.USAGE)
    env = db.env
    digest, total = _fingerprint(path)
    label = db.name if isinstance(db.name, bytes) else str(db.name or "").encode()
    marker = label + b"\0" + digest.encode()
    loads = await env.open_db_async(LOADS_DATABASE)
    stored = await loads.get(marker)
    skipped = int(stored) if stored is not None else 0
    done = skipped
    if progress is not None:
        progress(done, total)
    pending: list[tuple[Any, Any]] = []

    async def write(records: list[tuple[Any, Any]], loaded: int) -> None:
        await db.put_multi(records)
        if loaded < total:
            await loads.put(marker, str(loaded).encode())
        else:
            await loads.delete(marker)

    async def write_chunk() -> None:
        nonlocal done
        loaded = done + len(pending)
        try:
            # One transaction, run again on a conflict with another writer (its
            # writes are the same every time).
            await env.transact(write, pending, loaded)
        except DecodeError as exc:
            raise CliError(str(exc), ExitCode.DECODE) from exc
        except AiolmdbError as exc:
            raise CliError(
                f"{path}: the records after the first {done} could not be written: {exc}",
                ExitCode.PROBLEMS,
            ) from exc
        done = loaded
        pending.clear()
        if progress is not None:
            progress(done, total)

    seen = 0
    for number, line in _lines(path):
        seen += 1
        if seen <= skipped:
            continue
        pending.append(_parse(db, path, number, line))
        if len(pending) == chunk:
            await write_chunk()
    if pending:
        await write_chunk()
    return LoadResult(total=total, skipped=skipped, written=done - skipped)
