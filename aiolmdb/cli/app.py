"""The ``aiolmdb`` console: its commands, their options, and how their results print.

Each command opens the environment a location names (refusing one that does
not exist), calls the logic of its module (:mod:`.inspect`, :mod:`.transfer`,
:mod:`.verify`, :mod:`.maintenance`) and prints the result: tables on the
terminal, JSON for records. Failures print one line on stderr and exit with
an :class:`~.errors.ExitCode`.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..environment import AsyncEnvironment
from ..errors import AiolmdbError, DatabaseNotFoundError, DecodeError, UnsupportedError
from ..models import Collection
from .errors import CliError, ExitCode
from .inspect import environment_stat, get_record, list_databases, scan_records
from .maintenance import copy_environment, reader_table
from .target import import_collection, open_database, open_location, require_environment
from .transfer import LOAD_CHUNK, dump_records, load_records
from .verify import verify_collection, verify_databases

__all__ = ["app", "run"]

R = TypeVar("R")

app = typer.Typer(
    name="aiolmdb",
    help="Look at, check, back up and load aiolmdb environments: an LMDB path or a "
    "postgresql:// URL.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)
if not out.is_terminal:
    # Piped or captured: tables at full width rather than cut to 80 columns.
    out.width = 200

Location = Annotated[
    str, typer.Argument(help="An LMDB environment's directory, or a postgresql:// URL.")
]
DbOption = Annotated[
    str | None,
    typer.Option("--db", "-d", help="The named database (default: the unnamed one)."),
]
CollectionOption = Annotated[
    str | None,
    typer.Option(
        "--collection",
        "-c",
        help="The application's collection, as module:Class (e.g. myapp.models:Users): "
        "keys and values are decoded through it.",
    ),
]

#: How aiolmdb's own errors map to exit codes (the first match wins).
_EXIT_CODES: tuple[tuple[type[AiolmdbError], ExitCode], ...] = (
    (DecodeError, ExitCode.DECODE),
    (DatabaseNotFoundError, ExitCode.NOT_FOUND),
    (UnsupportedError, ExitCode.UNSUPPORTED),
)


def run(work: Coroutine[Any, Any, R]) -> R:
    """Run a command's work on a fresh event loop; a failure prints one line on stderr
    and exits with its code."""
    try:
        return asyncio.run(work)
    except KeyboardInterrupt:
        # What was committed stays; a load run again goes on from there.
        _fail("interrupted (a load run again goes on where it stopped)", ExitCode.INTERRUPTED)
    except CliError as exc:
        _fail(str(exc), exc.code)
    except AiolmdbError as exc:
        code = next((code for kind, code in _EXIT_CODES if isinstance(exc, kind)), None)
        _fail(f"{type(exc).__name__}: {exc}", code or ExitCode.PROBLEMS)
    except OSError as exc:  # a file, a directory, a connection: the user's to fix
        _fail(f"{type(exc).__name__}: {exc}", ExitCode.PROBLEMS)


def _fail(message: str, code: ExitCode) -> NoReturn:
    err.print(f"aiolmdb: error: {message}", markup=False)
    raise typer.Exit(int(code))


async def _with_env(
    location: str, body: Callable[[AsyncEnvironment], Awaitable[R]], *, create: bool = False
) -> R:
    env = await open_location(location, create=create)
    async with env:
        return await body(env)


def _collection(spec: str | None) -> type[Collection[Any, Any]] | None:
    return None if spec is None else import_collection(spec)


def _source_options(db: str | None, collection: str | None) -> None:
    if db is not None and collection is not None:
        _fail(
            "give --db or --collection, not both (a collection names its database)",
            ExitCode.USAGE,
        )


def _json_line(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False)


def _shown(obj: Any, *, indent: int | None = None) -> str:
    """A key or value for a person to read: a string (raw bytes are escaped text) as it
    is, anything else as JSON."""
    return obj if isinstance(obj, str) else json.dumps(obj, indent=indent, ensure_ascii=False)


@app.command()
def stat(location: Location) -> None:
    """The engine, the location, how many databases; on LMDB its map and pages too."""

    async def body(env: AsyncEnvironment) -> dict[str, Any]:
        return await environment_stat(env)

    table = Table("field", "value", title=None, box=None)
    for key, value in run(_with_env(location, body)).items():
        table.add_row(key, str(value))
    out.print(table)


@app.command("ls")
def list_command(
    location: Location,
    as_json: Annotated[bool, typer.Option("--json", help="JSON Lines, one per database.")] = False,
) -> None:
    """The named databases: collections, their indexes, plain databases; records and bytes."""
    summaries = run(_with_env(location, list_databases))
    if as_json:
        for summary in summaries:
            out.print(
                _json_line(
                    {
                        "name": summary.name,
                        "kind": summary.kind.value,
                        "records": summary.records,
                        "bytes": summary.size,
                        "of": summary.of or None,
                    }
                ),
                markup=False,
            )
        return
    table = Table("name", "kind", "records", "bytes", "index of")
    for summary in summaries:
        table.add_row(
            summary.name, summary.kind.value, str(summary.records), str(summary.size), summary.of
        )
    out.print(table)


@app.command()
def get(
    location: Location,
    key: Annotated[str, typer.Argument(help="The key, as the key coder reads it.")],
    db: DbOption = None,
    collection: CollectionOption = None,
) -> None:
    """The value stored under KEY: JSON, or a string as it is (exit 3 when there is none)."""
    _source_options(db, collection)

    async def body(env: AsyncEnvironment) -> Any:
        source = await open_database(env, db, _collection(collection))
        return await get_record(source, key)

    out.print(_shown(run(_with_env(location, body)), indent=2), markup=False)


@app.command()
def scan(
    location: Location,
    db: DbOption = None,
    collection: CollectionOption = None,
    start: Annotated[str | None, typer.Option(help="The first key (inclusive).")] = None,
    stop: Annotated[str | None, typer.Option(help="The key to stop before (exclusive).")] = None,
    prefix: Annotated[
        str | None, typer.Option(help="Only keys starting with it (a leading part of a tuple).")
    ] = None,
    reverse: Annotated[bool, typer.Option("--reverse", help="Highest key first.")] = False,
    limit: Annotated[int | None, typer.Option(help="At most this many records.")] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="JSON Lines, as dump writes them.")
    ] = False,
) -> None:
    """Records in key order, within bounds or a prefix."""
    _source_options(db, collection)

    rows: list[tuple[Any, Any]] = []

    async def body(env: AsyncEnvironment) -> int:
        source = await open_database(env, db, _collection(collection))
        records = scan_records(
            source, start=start, stop=stop, prefix=prefix, reverse=reverse, limit=limit
        )
        count = 0
        async for key, value in records:
            count += 1
            if as_json:  # streamed: a scan of any size runs in bounded memory
                out.print(_json_line({"key": key, "value": value}), markup=False)
            else:
                rows.append((key, value))
        return count

    count = run(_with_env(location, body))
    if not as_json:
        table = Table("key", "value")
        for key, value in rows:
            table.add_row(_shown(key), _shown(value))
        out.print(table)
    err.print(f"{count} records", markup=False)


@app.command()
def dump(
    location: Location,
    db: DbOption = None,
    collection: CollectionOption = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="The file to write (default: stdout).")
    ] = None,
) -> None:
    """Every record as JSON Lines ({"key": ..., "value": ...}), from one read snapshot."""
    _source_options(db, collection)

    async def body(env: AsyncEnvironment) -> int:
        source = await open_database(env, db, _collection(collection))
        if output is None:
            return await dump_records(source, sys.stdout)
        with output.open("w", encoding="utf-8") as f:
            return await dump_records(source, f)

    count = run(_with_env(location, body))
    err.print(f"{count} records dumped", markup=False)


@app.command()
def load(
    location: Location,
    input_file: Annotated[
        Path,
        typer.Argument(
            metavar="FILE", help="JSON Lines, as dump writes them.", exists=True, dir_okay=False
        ),
    ],
    db: DbOption = None,
    collection: CollectionOption = None,
    chunk: Annotated[int, typer.Option(help="Records per write transaction.")] = LOAD_CHUNK,
    create: Annotated[
        bool, typer.Option("--create", help="Create the environment and database if missing.")
    ] = False,
) -> None:
    """Write the records of FILE, a transaction per chunk; run again, it resumes."""
    _source_options(db, collection)

    async def body(env: AsyncEnvironment) -> Any:
        source = await open_database(env, db, _collection(collection), create=create)
        with Progress(
            TextColumn("loading"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err,
            transient=True,
            disable=not err.is_terminal,
        ) as progress:
            task = progress.add_task("load", total=None)

            def advance(done: int, total: int) -> None:
                progress.update(task, completed=done, total=total)

            return await load_records(source, input_file, chunk=chunk, progress=advance)

    result = run(_with_env(location, body, create=create))
    resumed = f", {result.skipped} loaded before" if result.skipped else ""
    err.print(f"{result.written} records loaded{resumed} ({result.total} in all)", markup=False)


@app.command()
def copy(
    location: Location,
    destination: Annotated[str, typer.Argument(help="A new directory for the copy.")],
    compact: Annotated[bool, typer.Option("--compact", help="Leave out free pages.")] = False,
) -> None:
    """A consistent backup of an LMDB environment into a new directory."""

    async def body(env: AsyncEnvironment) -> None:
        await copy_environment(env, destination, compact=compact)

    run(_with_env(location, body))
    err.print(f"copied to {destination}" + (" (compacted)" if compact else ""), markup=False)


@app.command()
def verify(
    location: Location,
    collection: Annotated[
        list[str] | None,
        typer.Option(
            "--collection",
            "-c",
            help="A collection to check, as module:Class (repeatable). Without one, every "
            "database is read through.",
        ),
    ] = None,
) -> None:
    """Every record decodes and every index matches its records; exit 1 with what is wrong."""
    specs = collection or []

    async def body(env: AsyncEnvironment) -> tuple[list[str], int]:
        problems = []
        checked = 0
        for spec in specs:
            opened = await open_database(env, None, import_collection(spec))
            assert isinstance(opened, Collection)
            problems.extend(await verify_collection(env, opened))
            checked += 1
        if not specs:
            problems.extend(await verify_databases(env))
        return [str(problem) for problem in problems], checked

    problems, checked = run(_with_env(location, body))
    for problem in problems:
        out.print(problem, markup=False)
    what = f"collections checked: {checked}" if specs else "every database read"
    if problems:
        _fail(f"problems found: {len(problems)} ({what})", ExitCode.PROBLEMS)
    err.print(f"ok ({what})", markup=False)


@app.command()
def readers(
    location: Location,
    clear_stale: Annotated[
        bool, typer.Option("--clear-stale", help="Free the slots of processes that died.")
    ] = False,
) -> None:
    """LMDB's reader table; with --clear-stale, free the slots of dead processes."""

    async def body() -> tuple[str, int | None]:
        await require_environment(location)
        return reader_table(location, clear_stale=clear_stale)

    table, cleared = run(body())
    out.print(table.rstrip("\n"), markup=False)
    if cleared is not None:
        err.print(f"{cleared} stale reader slots cleared", markup=False)
