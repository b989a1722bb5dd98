"""How many writes the store commits per second on its SQLite backend.

    .venv/bin/python bench/store.py [--writes N] [--writers N] [--api-calls N]

1. One writer: N transactions one after the other, each awaited before the next (a
   commit, and so an fsync, per write: what the store did before group commit).
2. `--writers` concurrent writers sharing N transactions: those that arrive while a
   commit is in flight go together into the next one (group commit).
3. `docker service update` through a real daemon's API: 8 clients, each updating its
   own service (a label change) as fast as the answers come back.

It prints transactions (or calls) per second for each, and the ratio of group commit
to one fsync per write. Progress goes to stderr; everything it creates (temporary
directories, the daemon, its services) is removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

from converge import BenchError, ConvergeBench, DockerApi
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from shoal.manager.store import Store, Tx
from shoal.manager.store.sqlite import SQLiteBackend
from shoal.types.node import Node, NodeSpec, NodeStatus

DEFAULT_WRITES = 2000
DEFAULT_WRITERS = 50
DEFAULT_API_CLIENTS = 8
DEFAULT_API_CALLS = 800
SWARM_INIT = {"ListenAddr": "127.0.0.1:0", "AdvertiseAddr": "127.0.0.1"}


def node(i: int) -> Node:
    return Node(
        id=f"node{i:06d}",
        spec=NodeSpec(role="worker", availability="active"),
        status=NodeStatus(state="ready"),
    )


def create(i: int) -> object:
    def write(tx: Tx) -> Node:
        return tx.create(node(i))

    return write


async def one_writer(path: Path, writes: int, progress: Progress) -> tuple[float, int]:
    store = Store(SQLiteBackend(path))
    bar = progress.add_task("one writer", total=writes)
    try:
        t0 = time.perf_counter()
        for i in range(writes):
            await store.update(create(i))  # type: ignore[arg-type]
            progress.advance(bar)
        return time.perf_counter() - t0, store.group_commits
    finally:
        store.close()


async def many_writers(
    path: Path, writes: int, writers: int, progress: Progress
) -> tuple[float, int]:
    store = Store(SQLiteBackend(path))
    bar = progress.add_task(f"{writers} writers", total=writes)
    per_writer = writes // writers

    async def writer(w: int) -> None:
        for i in range(per_writer):
            await store.update(create(w * per_writer + i))  # type: ignore[arg-type]
            progress.advance(bar)

    try:
        t0 = time.perf_counter()
        await asyncio.gather(*(writer(w) for w in range(writers)))
        return time.perf_counter() - t0, store.group_commits
    finally:
        store.close()


def api_updates(console: Console, clients: int, calls: int, progress: Progress) -> float:
    """Seconds for `calls` service updates from `clients` threads on a real daemon."""
    bench = ConvergeBench(Path(tempfile.mkdtemp(prefix="shoal-bench-store-", dir="/tmp")), console)
    try:
        bench.start_daemon()
        bench.api.call("POST", "/swarm/init", SWARM_INIT)
        ids = []
        for c in range(clients):
            spec = {
                "Name": f"bench-store-{c}",
                "TaskTemplate": {"ContainerSpec": {"Image": "busybox", "Args": ["true"]}},
                "Mode": {"Replicated": {"Replicas": 0}},
            }
            ids.append(str(bench.api.call("POST", "/services/create", spec)["ID"]))
        bar = progress.add_task(f"service update x{clients}", total=calls)
        errors: list[BaseException] = []

        def client(service_id: str) -> None:
            api = DockerApi(bench.socket_path)
            try:
                for n in range(calls // clients):
                    current = api.call("GET", f"/services/{service_id}")
                    spec = current["Spec"]
                    spec["Labels"] = {"n": str(n)}
                    api.call(
                        "POST",
                        f"/services/{service_id}/update",
                        spec,
                        query={"version": str(current["Version"]["Index"])},
                    )
                    progress.advance(bar)
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=client, args=(i,)) for i in ids]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - t0
        if errors:
            raise BenchError(f"a client failed: {errors[0]!r}")
        for service_id in ids:
            bench.api.call("DELETE", f"/services/{service_id}", ok=(200, 204, 404))
        return elapsed
    finally:
        bench.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--writes", type=int, default=DEFAULT_WRITES)
    parser.add_argument("--writers", type=int, default=DEFAULT_WRITERS)
    parser.add_argument("--api-clients", type=int, default=DEFAULT_API_CLIENTS)
    parser.add_argument("--api-calls", type=int, default=DEFAULT_API_CALLS)
    parser.add_argument(
        "--api-only", action="store_true", help="only the API figure (e.g. for an older tree)"
    )
    args = parser.parse_args(argv)
    console = Console(stderr=True)
    workdir = Path(tempfile.mkdtemp(prefix="shoal-bench-store-", dir="/tmp"))
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    try:
        with Progress(*columns, console=console) as progress:
            if not args.api_only:
                one_s, one_commits = asyncio.run(
                    one_writer(workdir / "one.db", args.writes, progress)
                )
                writes = args.writes // args.writers * args.writers
                many_s, many_commits = asyncio.run(
                    many_writers(workdir / "many.db", writes, args.writers, progress)
                )
            api_s = api_updates(console, args.api_clients, args.api_calls, progress)
    except BenchError as e:
        console.print(f"store: {e}")
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    api_calls = args.api_calls // args.api_clients * args.api_clients
    if not args.api_only:
        one_rate, many_rate = args.writes / one_s, writes / many_s
        print(
            f"store (SQLite, fsync per commit): one writer {one_rate:.0f} tx/s "
            f"({one_commits} commits); {args.writers} writers {many_rate:.0f} tx/s "
            f"({many_commits} commits, {writes / many_commits:.1f} tx per commit); "
            f"group commit / one fsync per write = {many_rate / one_rate:.1f}x"
        )
    print(
        f"api: {api_calls} service updates from {args.api_clients} clients in {api_s:.2f} s "
        f"= {api_calls / api_s:.0f} updates/s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
