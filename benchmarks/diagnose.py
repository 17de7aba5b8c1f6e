"""Where aiolmdb's time goes in the workloads that miss their targets.

``python -m benchmarks.diagnose [--quick]`` instruments aiolmdb from the
outside (wrapping private methods of one environment's writer and one
database, never editing the package) and prints:

- the cost of each step of a point ``get`` (W1, W2);
- for concurrent and sequential puts (W3, W4, W7): group-commit batch sizes,
  the writer thread's busy time and CPU time, the loop thread's CPU time, and
  for sequential puts the latency of each hop;
- for the bulk load (W5): time spent encoding on the reader pool, in the
  writer (apply + commit) and on the loop;
- for event-loop lag (W8): how long one ``cursor.putmulti`` of a chunk holds
  the GIL, and the lag with smaller chunks or a shorter GIL switch interval.

These are diagnostics, not the benchmark: run ``benchmarks.run`` for that.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import aiolmdb

from ._harness import (
    KV_DB,
    aiolmdb_env,
    chunked,
    lateness_stats,
    make_pairs,
    populate,
    sync_env,
    temp_dir,
    ticker,
)
from ._models import User, encode_user, encode_user_key, make_users, open_users

__all__ = ["main"]


def _us(seconds: float, n: int) -> str:
    return f"{seconds / n * 1e6:8.2f} µs"


class WriterProbe:
    """Wraps one environment's writer: batch sizes and timings, writer CPU time."""

    def __init__(self, env: aiolmdb.AsyncEnvironment) -> None:
        writer: Any = env._writer
        self.batches: list[tuple[float, float, int]] = []  # (start, end, jobs)
        self.cpu = 0.0
        original_commit = writer._commit_batch
        original_run = writer._run

        def commit_batch(jobs: list[Any]) -> None:
            start = time.perf_counter()
            original_commit(jobs)
            self.batches.append((start, time.perf_counter(), len(jobs)))

        def run() -> None:
            cpu = time.thread_time()
            try:
                original_run()
            finally:
                self.cpu += time.thread_time() - cpu

        writer._commit_batch = commit_batch
        if writer._thread is not None:
            raise RuntimeError("probe the writer before its first write")
        writer._run = run

    def reset(self) -> None:
        self.batches.clear()

    def summary(self, wall: float) -> str:
        if not self.batches:
            return "no batches"
        sizes = [b[2] for b in self.batches]
        busy = sum(b[1] - b[0] for b in self.batches)
        durations = sorted(b[1] - b[0] for b in self.batches)
        return (
            f"{len(sizes)} commits, jobs/commit mean {statistics.mean(sizes):.1f} "
            f"median {statistics.median(sizes):.0f} max {max(sizes)}; "
            f"batch (begin+apply+commit) median {durations[len(durations) // 2] * 1e6:.0f} µs; "
            f"writer busy {busy / wall:.0%} of wall"
        )


async def _loop_cpu(work: Callable[[], Awaitable[object]]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the loop thread) of ``work()``."""
    cpu = time.thread_time()
    start = time.perf_counter()
    await work()
    return time.perf_counter() - start, time.thread_time() - cpu


# -- W1/W2: the get path -------------------------------------------------------------------


async def diagnose_get(n: int) -> None:
    print(f"\n## Point get, step by step ({n:,} gets, µs per get)")
    pairs = make_pairs(n, seed=1)
    keys = [k for k, _ in pairs]
    with temp_dir("diag-get") as path:
        populate(path, pairs)
        env = sync_env(path)
        db = env.open_db(KV_DB)

        def sync_plain() -> None:
            for k in keys:
                with env.begin() as txn:
                    txn.get(k, db=db)

        def sync_buffers() -> None:
            for k in keys:
                txn = env.begin(buffers=True)
                try:
                    buf = txn.get(k, db=db)
                    if buf is not None:
                        bytes(buf)
                finally:
                    txn.abort()

        for label, fn in (
            ("sync: with begin(): get", sync_plain),
            ("sync: begin(buffers) get bytes() abort", sync_buffers),
        ):
            fn()
            start = time.perf_counter()
            fn()
            print(f"  {label:<48}{_us(time.perf_counter() - start, n)}")
        env.close()

    users = make_users(n, seed=2)
    with temp_dir("diag-get-aiolmdb") as path:
        populate(path, pairs)
        populate(path, [(encode_user_key(k), encode_user(u)) for k, u in users], name=b"Users")
        async with aiolmdb_env(path) as aenv:
            adb = aenv.open_db(KV_DB)
            coll, _how = open_users(aenv)
            ints = [k for k, _ in users]
            raw_users = [encode_user(u) for _, u in users]

            async def noop() -> None:
                return None

            def ident(t: Any) -> None:
                return None

            async def coroutine_only() -> None:
                for _k in keys:
                    await noop()

            async def encode_key() -> None:
                for k in keys:
                    adb._encode_key(k)

            async def read_txn_only() -> None:
                for _k in keys:
                    aenv._call_in_read_txn(ident)

            async def env_read() -> None:
                for _k in keys:
                    await aenv._read(ident, None)

            async def full_get() -> None:
                for k in keys:
                    await adb.get(k)

            async def encode_int_key() -> None:
                for k in ints:
                    coll._encode_key(k)

            async def decode_user() -> None:
                for raw in raw_users:
                    coll._decode_value(b"k", raw)

            async def validate_json() -> None:
                for raw in raw_users:
                    User.model_validate_json(raw)

            async def collection_get() -> None:
                for k in ints:
                    await coll.get(k)

            steps: list[tuple[str, Callable[[], Awaitable[None]]]] = [
                ("await of a trivial coroutine", coroutine_only),
                ("db._encode_key(bytes)", encode_key),
                ("env._call_in_read_txn(no-op fn)", read_txn_only),
                ("await env._read(no-op fn)", env_read),
                ("await db.get(k)  [W1]", full_get),
                ("collection._encode_key(int)", encode_int_key),
                ("collection._decode_value (PydanticCoder)", decode_user),
                ("User.model_validate_json", validate_json),
                ("await collection.get(k)  [W2]", collection_get),
            ]
            for label, step in steps:
                await step()
                start = time.perf_counter()
                await step()
                print(f"  {label:<48}{_us(time.perf_counter() - start, n)}")


# -- W3/W4/W7: puts through the writer -----------------------------------------------------


async def diagnose_puts(tasks: int, per_task: int, sequential: int) -> None:
    print(f"\n## Concurrent puts ({tasks:,} tasks x {per_task})  [W3]")
    pairs = make_pairs(tasks * per_task, seed=3)
    with temp_dir("diag-w3") as path:
        async with aiolmdb_env(path) as aenv:
            probe = WriterProbe(aenv)
            adb = aenv.open_db(KV_DB)

            async def task(items: Sequence[tuple[bytes, bytes]]) -> None:
                for k, v in items:
                    await adb.put(k, v)

            parts = [pairs[i * per_task : (i + 1) * per_task] for i in range(tasks)]
            await asyncio.gather(*(task(p[:1]) for p in parts))  # warm-up (overwritten later)
            probe.reset()
            wall, cpu = await _loop_cpu(lambda: asyncio.gather(*(task(p) for p in parts)))
            n = len(pairs)
            print(
                f"  {n / wall:,.0f} puts/s; wall {_us(wall, n)}/put; "
                f"loop-thread CPU {_us(cpu, n)}/put"
            )
            print(f"  {probe.summary(wall)}")
        # The writer's CPU time is known once its thread has ended (at close).
        print(f"  writer-thread CPU (whole run, incl. warm-up) {_us(probe.cpu, len(pairs))}/put")

    print(f"\n## Sequential puts ({sequential:,} from one task, each awaited)  [W4]")
    seq = make_pairs(sequential, seed=4)
    with temp_dir("diag-w4") as path:
        async with aiolmdb_env(path) as aenv:
            probe = WriterProbe(aenv)
            adb = aenv.open_db(KV_DB)
            for k, v in seq[:20]:
                await adb.put(k, v)
            probe.reset()
            submits: list[float] = []
            resumes: list[float] = []
            for k, v in seq:
                submits.append(time.perf_counter())
                await adb.put(k, v)
                resumes.append(time.perf_counter())
            batches = probe.batches[-len(seq) :]
            to_writer = [b[0] - s for b, s in zip(batches, submits, strict=True)]
            in_writer = [b[1] - b[0] for b in batches]
            to_loop = [r - b[1] for b, r in zip(batches, resumes, strict=True)]
            total = [r - s for s, r in zip(submits, resumes, strict=True)]
            med = statistics.median
            print(
                f"  median per put: total {med(total) * 1e6:.0f} µs = loop→writer "
                f"{med(to_writer) * 1e6:.0f} + writer batch (begin/apply/commit) "
                f"{med(in_writer) * 1e6:.0f} + writer→loop {med(to_loop) * 1e6:.0f}"
            )

    with temp_dir("diag-w4-sync") as path:
        env = sync_env(path)
        db = env.open_db(KV_DB)
        commit_times: list[float] = []
        hop_in: list[float] = []
        hop_out: list[float] = []
        loop = asyncio.get_running_loop()
        marks: list[float] = [0.0, 0.0]

        def put_one(k: bytes, v: bytes) -> None:
            marks[0] = time.perf_counter()
            with env.begin(write=True) as txn:
                txn.put(k, v, db=db)
            marks[1] = time.perf_counter()

        for k, v in seq:
            start = time.perf_counter()
            put_one(k, v)
            commit_times.append(time.perf_counter() - start)
        for k, v in seq:
            start = time.perf_counter()
            await loop.run_in_executor(None, put_one, k, v)
            end = time.perf_counter()
            hop_in.append(marks[0] - start)
            hop_out.append(end - marks[1])
        env.close()
        med = statistics.median
        print(
            f"  sync txn per put: median {med(commit_times) * 1e6:.0f} µs; run_in_executor hops: "
            f"loop→worker {med(hop_in) * 1e6:.0f} µs, worker→loop {med(hop_out) * 1e6:.0f} µs"
        )


async def diagnose_mixed(records: int, tasks: int, ops: int) -> None:
    print(f"\n## 90/10 get/put from {tasks} tasks x {ops} ops  [W7]")
    pairs = make_pairs(records, seed=7)
    keys = [k for k, _ in pairs]
    rng = random.Random(71)
    plan = [[(rng.random() < 0.1, rng.choice(keys)) for _ in range(ops)] for _ in range(tasks)]
    with temp_dir("diag-w7") as path:
        populate(path, pairs)
        async with aiolmdb_env(path) as aenv:
            probe = WriterProbe(aenv)
            adb = aenv.open_db(KV_DB)
            gets = [0.0]

            async def task(steps: list[tuple[bool, bytes]]) -> None:
                for is_put, k in steps:
                    if is_put:
                        await adb.put(k, b"x" * 100)
                    else:
                        start = time.perf_counter()
                        await adb.get(k)
                        gets[0] += time.perf_counter() - start

            await asyncio.gather(*(task(p[:5]) for p in plan))
            probe.reset()
            gets[0] = 0.0
            wall, cpu = await _loop_cpu(lambda: asyncio.gather(*(task(p) for p in plan)))
            n = tasks * ops
            n_gets = sum(1 for p in plan for is_put, _ in p if not is_put)
            print(f"  {n / wall:,.0f} ops/s; loop-thread CPU {cpu / wall:.0%} of wall")
            print(
                f"  gets: {gets[0] / n_gets * 1e6:.2f} µs each on the loop "
                f"({gets[0] / wall:.0%} of wall)"
            )
            print(f"  {probe.summary(wall)}")


# -- W5/W8: bulk load ----------------------------------------------------------------------------


async def diagnose_bulk(records: int, chunk: int) -> None:
    print(f"\n## Bulk load, {records:,} records in chunks of {chunk:,}  [W5, W8]")
    pairs = make_pairs(records, seed=5)
    chunks = list(chunked(pairs, chunk))

    with temp_dir("diag-w5-sync") as path:
        env = sync_env(path)
        db = env.open_db(KV_DB)
        hold: list[float] = []
        commits: list[float] = []
        for part in chunks:
            txn = env.begin(write=True)
            start = time.perf_counter()
            with txn.cursor(db) as cur:
                cur.putmulti(part)
            mid = time.perf_counter()
            txn.commit()
            hold.append(mid - start)
            commits.append(time.perf_counter() - mid)
        env.close()
        print(
            f"  sync per chunk: cursor.putmulti median {statistics.median(hold) * 1e3:.1f} ms "
            f"(py-lmdb drops the GIL inside it), max {max(hold) * 1e3:.1f} ms; commit median "
            f"{statistics.median(commits) * 1e3:.1f} ms, total putmulti {sum(hold):.2f} s + "
            f"commits {sum(commits):.2f} s"
        )

    async def load(
        chunk_size: int, switch: float | None, *, freeze: bool = False, release_every: int = 0
    ) -> None:
        """One aiolmdb load with the ticker; variants test where the loop's lag comes from.

        ``switch``: GIL switch interval; ``freeze``: ``gc.freeze()`` first (no full
        collections over the benchmark's own million tuples); ``release_every``:
        encode in slices of that many items with ``time.sleep(0)`` (drops the GIL)
        between them, as a fix inside ``_encode_items`` would.
        """
        parts = list(chunked(pairs, chunk_size))
        old = sys.getswitchinterval()
        if switch is not None:
            sys.setswitchinterval(switch)
        if freeze:
            gc.collect()
            gc.freeze()
        try:
            with temp_dir("diag-w5") as path:
                async with aiolmdb_env(path) as aenv:
                    probe = WriterProbe(aenv)
                    adb: Any = aenv.open_db(KV_DB)
                    encode_time = [0.0]
                    original = adb._encode_items

                    def encode(items: list[Any]) -> Any:
                        start = time.perf_counter()
                        try:
                            if not release_every:
                                return original(items)
                            out: list[Any] = []
                            for i in range(0, len(items), release_every):
                                out.extend(original(items[i : i + release_every]))
                                time.sleep(0)
                            return out
                        finally:
                            encode_time[0] += time.perf_counter() - start

                    adb._encode_items = encode
                    stop = asyncio.Event()
                    lateness: list[float] = []
                    tick = asyncio.ensure_future(ticker(stop, lateness))

                    async def run() -> None:
                        for part in parts:
                            await adb.put_multi(part)

                    wall, cpu = await _loop_cpu(run)
                    stop.set()
                    await tick
                    busy = sum(b[1] - b[0] for b in probe.batches)
                    _p50, p99, worst = lateness_stats(lateness)
                    label = f"chunk {chunk_size:,}"
                    if switch:
                        label += f", switch interval {switch * 1e3:g} ms"
                    if freeze:
                        label += ", gc.freeze()"
                    if release_every:
                        label += f", encode drops the GIL every {release_every}"
                    print(
                        f"  aiolmdb {label}: {records / wall:,.0f} rec/s; encode on reader pool "
                        f"{encode_time[0]:.2f} s, writer batches {busy:.2f} s, loop CPU "
                        f"{cpu:.2f} s, wall {wall:.2f} s; ticker p99 {p99 * 1e3:.2f} ms, "
                        f"max {worst * 1e3:.1f} ms"
                    )
        finally:
            sys.setswitchinterval(old)
            if freeze:
                gc.unfreeze()

    await load(chunk, None)
    await load(chunk, 0.0005)
    await load(chunk, None, freeze=True)
    await load(chunk, None, release_every=256)
    await load(chunk, None, freeze=True, release_every=256)
    await load(max(1, chunk // 10), None)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.diagnose")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    scale = 10 if args.quick else 1

    async def all_of_them() -> None:
        await diagnose_get(100_000 // scale)
        await diagnose_puts(1_000, 100 // scale, 1_000 // scale)
        await diagnose_mixed(100_000 // scale, 100, 1_000 // scale)
        await diagnose_bulk(1_000_000 // scale, 10_000)

    asyncio.run(all_of_them())
    return 0


if __name__ == "__main__":
    sys.exit(main())
