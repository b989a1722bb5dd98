"""Scheduler benchmark: place N pending tasks on 1,000 nodes, the scheduler alone.

    .venv/bin/python bench/schedule.py [--nodes N] [--tasks N [N ...]]
        [--constraint both|yes|no] [--repeat N] [--gc-off-while-building] [--profile FILE]

One process, no daemon and no agents: a `Store(MemoryBackend())`, the nodes (ready,
active, 8 CPUs and 32 GiB each; every third one labelled `tier=gold`), one replicated
service and its N tasks in PENDING (made as the orchestrator and the allocator make
them), all written through store transactions; then `Scheduler.load(store.view())` and
`Scheduler.tick()`, which places every pending task and commits the decisions in
batched transactions. Each case runs with and without the constraint
`node.labels.tier==gold`, which a third of the nodes meet.

Prints on stdout one line per case: the total time (building nodes and tasks in the
store, loading the scheduler, scheduling and committing, as SwarmKit's figure includes
building nodes and tasks), the time of `tick()` alone (scheduling + commit), and the
ratio to SwarmKit's published figure (moby/swarmkit PR 193, Go, "rather old laptop"):
SwarmKit seconds / shoal seconds, so above 1 is faster than SwarmKit. It also shows how
much of the total went to pauses of the cyclic garbage collector, which is left on as
the daemon runs it unless `--gc-off-while-building` (said in the output) turns it off
while the nodes and tasks are built. `--repeat N` keeps the fastest of N runs of each
case. Progress goes to stderr.

After each case it checks the store: every task ASSIGNED to a node that meets the
constraint, and spread evenly (at most one task of difference between eligible nodes).
Exits 1 if any case is wrong.

`--profile FILE` runs the cases under cProfile (timings then include its overhead),
writes the statistics to FILE and prints the top functions by cumulative time and by
own time (tottime).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import pstats
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from shoal.ids import new_id
from shoal.manager.orchestrator.task import new_task, set_status
from shoal.manager.scheduler.scheduler import MSG_ASSIGNED, Scheduler
from shoal.manager.store import MemoryBackend, Store, Tx
from shoal.manager.store.memory import MAX_CHANGES_PER_BATCH
from shoal.types.meta import ServiceMeta
from shoal.types.node import (
    EngineDescription,
    Node,
    NodeDescription,
    NodeResources,
    NodeSpec,
    NodeStatus,
)
from shoal.types.service import (
    ContainerSpec,
    Placement,
    Platform,
    ReplicatedService,
    Service,
    ServiceMode,
    ServiceSpec,
    TaskSpec,
)
from shoal.types.task import TaskState

DEFAULT_NODES = 1_000
DEFAULT_TASKS = (10_000, 100_000)

# SwarmKit's scheduler benchmark as published in moby/swarmkit PR 193 (2016, Go, "rather
# old laptop", "these benchmarks include the overhead of creating the nodes and tasks"):
# seconds by (nodes, tasks). No constraint: its constrained variants (PR 1028, a third of
# the nodes eligible) came without published figures, so they are compared to these too.
ANCHOR_SECONDS: dict[tuple[int, int], float] = {
    (1_000, 1_000): 0.189,
    (1_000, 10_000): 1.8,
    (1_000, 100_000): 22.6,
    (100_000, 100_000): 29.2,
}
ANCHOR_SOURCE = "moby/swarmkit PR 193, Go"

# What a node looks like: a mid-sized worker.
NODE_NANO_CPUS = 8 * 1_000_000_000
NODE_MEMORY_BYTES = 32 * 1024**3
NODE_OS = "linux"
NODE_ARCH = "x86_64"
ENGINE_VERSION = "28.0.0"
# Every GOLD_EVERY-th node is labelled tier=gold, the others tier=silver.
LABEL_KEY = "tier"
GOLD = "gold"
SILVER = "silver"
GOLD_EVERY = 3
CONSTRAINT = f"node.labels.{LABEL_KEY}=={GOLD}"

SERVICE_NAME = "bench-schedule"
SERVICE_IMAGE = "busybox"
SERVICE_ARGS = ["sleep", "1000"]
MSG_PENDING = "pending task scheduling"  # what the allocator writes

PROFILE_TOP = 25


class BenchError(Exception):
    """A case placed tasks wrongly; the message says how."""


@dataclass
class Result:
    nodes: int
    tasks: int
    constrained: bool
    eligible: int
    build_nodes_s: float
    build_tasks_s: float
    load_s: float
    tick_s: float
    gc_s: float  # collector pauses within the four phases above
    tick_gc_s: float  # of which within tick()
    commits: int

    @property
    def total_s(self) -> float:
        return self.build_nodes_s + self.build_tasks_s + self.load_s + self.tick_s

    def line(self, notes: list[str]) -> str:
        what = f"constraint {CONSTRAINT}" if self.constrained else "no constraint"
        transactions = "transaction" if self.commits == 1 else "transactions"
        text = (
            f"schedule: {self.tasks} tasks on {self.nodes} nodes, {what} "
            f"({self.eligible} eligible): {self.total_s:.2f} s total "
            f"(build nodes {self.build_nodes_s:.2f} s, tasks {self.build_tasks_s:.2f} s, "
            f"load {self.load_s:.2f} s, schedule+commit {self.tick_s:.2f} s "
            f"= {self.tasks / self.tick_s:,.0f} tasks/s in {self.commits} {transactions}; "
            f"GC pauses {self.gc_s:.2f} s, {self.tick_gc_s:.2f} s of them in schedule+commit); "
        )
        anchor = ANCHOR_SECONDS.get((self.nodes, self.tasks))
        if anchor is None:
            text += f"no SwarmKit figure for {self.tasks} tasks on {self.nodes} nodes"
        else:
            text += (
                f"SwarmKit {anchor:g} s ({ANCHOR_SOURCE}, including building): "
                f"ratio {anchor / self.total_s:.2f}x"
            )
        return text + "".join(f" [{n}]" for n in notes)


# --- building the cluster ---------------------------------------------------------------


def make_node(i: int) -> Node:
    tier = GOLD if i % GOLD_EVERY == 0 else SILVER
    return Node(
        id=new_id(),
        spec=NodeSpec(labels={LABEL_KEY: tier}, role="worker", availability="active"),
        description=NodeDescription(
            hostname=f"node-{i:05d}",
            platform=Platform(os=NODE_OS, architecture=NODE_ARCH),
            resources=NodeResources(nano_cpus=NODE_NANO_CPUS, memory_bytes=NODE_MEMORY_BYTES),
            engine=EngineDescription(engine_version=ENGINE_VERSION, labels={}, plugins=[]),
        ),
        status=NodeStatus(state="ready", addr=f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"),
    )


def service_spec(replicas: int, constrained: bool) -> ServiceSpec:
    return ServiceSpec(
        name=SERVICE_NAME,
        labels={},
        task_template=TaskSpec(
            container_spec=ContainerSpec(image=SERVICE_IMAGE, args=SERVICE_ARGS),
            placement=Placement(constraints=[CONSTRAINT]) if constrained else Placement(),
            force_update=0,
        ),
        mode=ServiceMode(replicated=ReplicatedService(replicas=replicas)),
    )


def in_chunks(
    store: Store, count: int, write: Callable[[Tx, int], object], advance: Callable[[int], None]
) -> None:
    """`write(tx, i)` for i in range(count), in transactions of the store's batch size."""
    for start in range(0, count, MAX_CHANGES_PER_BATCH):
        stop = min(start + MAX_CHANGES_PER_BATCH, count)

        def chunk(tx: Tx, start: int = start, stop: int = stop) -> None:
            for i in range(start, stop):
                write(tx, i)

        asyncio.run(store.update(chunk))
        advance(stop - start)


# --- one case -----------------------------------------------------------------------------


class GcClock:
    """Adds up the pauses of the cyclic garbage collector (a `gc.callbacks` entry)."""

    def __init__(self) -> None:
        self.total_s = 0.0
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.total_s += time.perf_counter() - self._started


@dataclass
class Options:
    nodes: int
    tasks: int
    constrained: bool
    gc_off_while_building: bool
    profiler: cProfile.Profile | None


@dataclass
class Bars:
    """One progress bar per phase of a case, reset on each run."""

    progress: Progress
    nodes: TaskID
    tasks: TaskID
    schedule: TaskID

    @classmethod
    def of(cls, progress: Progress, opts: Options) -> Bars:
        label = f"{opts.tasks} tasks{', constrained' if opts.constrained else ''}"
        return cls(
            progress,
            progress.add_task(f"{label}: nodes", total=opts.nodes),
            progress.add_task(f"{label}: tasks", total=opts.tasks),
            progress.add_task(f"{label}: schedule", total=opts.tasks),
        )

    def reset(self) -> None:
        for bar in (self.nodes, self.tasks, self.schedule):
            self.progress.reset(bar)

    def advancing(self, bar: TaskID) -> Callable[[int], None]:
        return lambda n: self.progress.advance(bar, n)


def run_case(opts: Options, bars: Bars, gc_clock: GcClock) -> Result:
    """Build, load and tick, timed (and profiled if asked); then verify, untimed."""
    store = Store(MemoryBackend())
    gc_before = gc_clock.total_s
    if opts.profiler is not None:
        opts.profiler.enable()
    if opts.gc_off_while_building:
        gc.disable()
    try:
        t0 = time.perf_counter()
        in_chunks(
            store, opts.nodes, lambda tx, i: tx.create(make_node(i)), bars.advancing(bars.nodes)
        )
        t1 = time.perf_counter()

        def create_service(tx: Tx) -> Service:
            spec = service_spec(opts.tasks, opts.constrained)
            return tx.create(Service(id=new_id(), spec=spec), ServiceMeta(spec_version=tx.index))

        service = asyncio.run(store.update(create_service))

        def create_task(tx: Tx, i: int) -> None:
            task, meta = new_task(service, tx.service_meta(service.id), i + 1)
            tx.create(set_status(task, TaskState.PENDING, MSG_PENDING), meta)

        in_chunks(store, opts.tasks, create_task, bars.advancing(bars.tasks))
        t2 = time.perf_counter()
    finally:
        gc.enable()

    sched = Scheduler(store)
    sched.load(store.view())
    t3 = time.perf_counter()
    commits_before = store.commits
    gc_before_tick = gc_clock.total_s
    asyncio.run(sched.tick())
    t4 = time.perf_counter()
    gc_s, tick_gc_s = gc_clock.total_s - gc_before, gc_clock.total_s - gc_before_tick
    if opts.profiler is not None:
        opts.profiler.disable()
    bars.progress.update(bars.schedule, completed=sched.scheduled)

    eligible = verify(store, opts.tasks, opts.constrained, sched)
    return Result(
        nodes=opts.nodes,
        tasks=opts.tasks,
        constrained=opts.constrained,
        eligible=eligible,
        build_nodes_s=t1 - t0,
        build_tasks_s=t2 - t1,
        load_s=t3 - t2,
        tick_s=t4 - t3,
        gc_s=gc_s,
        tick_gc_s=tick_gc_s,
        commits=store.commits - commits_before,
    )


def verify(store: Store, tasks: int, constrained: bool, sched: Scheduler) -> int:
    """Checks the placement in the store; returns the number of eligible nodes."""
    view = store.view()
    eligible = {
        n.id
        for n in view.nodes()
        if not constrained or (n.spec.labels or {}).get(LABEL_KEY) == GOLD
    }
    per_node: Counter[str] = Counter({nid: 0 for nid in eligible})
    wrong: Counter[str] = Counter()  # what is wrong with a task -> how many tasks
    all_tasks = view.tasks()
    for t in all_tasks:
        if t.status.state != TaskState.ASSIGNED.wire or t.status.message != MSG_ASSIGNED:
            wrong[f"{t.status.state} ({t.status.err or t.status.message})"] += 1
        elif t.node_id is None:
            wrong["assigned without a node"] += 1
        elif t.node_id not in eligible:
            wrong["on a node that does not meet the constraint"] += 1
        else:
            per_node[t.node_id] += 1
    problems = [f"{n} tasks {what}" for what, n in wrong.most_common()]
    if len(all_tasks) != tasks:
        problems.append(f"{len(all_tasks)} tasks in the store instead of {tasks}")
    if sched.pending:
        problems.append(f"{len(sched.pending)} tasks still pending in the scheduler")
    low, high = min(per_node.values()), max(per_node.values())
    if high - low > 1:
        problems.append(f"uneven spread: {low} to {high} tasks per eligible node")
    if problems:
        raise BenchError("; ".join(problems))
    return len(eligible)


# --- running ------------------------------------------------------------------------------


def cases(task_counts: list[int], constraint: str) -> Iterator[tuple[int, bool]]:
    for tasks in task_counts:
        if constraint in ("both", "no"):
            yield tasks, False
        if constraint in ("both", "yes"):
            yield tasks, True


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time the scheduler placing N pending tasks on a store of nodes."
    )
    parser.add_argument(
        "--nodes",
        type=int,
        default=DEFAULT_NODES,
        metavar="N",
        help=f"number of nodes (default {DEFAULT_NODES})",
    )
    parser.add_argument(
        "--tasks",
        type=int,
        nargs="+",
        default=list(DEFAULT_TASKS),
        metavar="N",
        help="task counts, one case each (default " + " ".join(map(str, DEFAULT_TASKS)) + ")",
    )
    parser.add_argument(
        "--constraint",
        choices=("both", "yes", "no"),
        default="both",
        help=f"run each count with {CONSTRAINT}, without it, or both (default both)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        metavar="N",
        help="run each case N times and print the fastest (default 1)",
    )
    parser.add_argument(
        "--gc-off-while-building",
        action="store_true",
        help="disable the cyclic garbage collector while the nodes and tasks are built "
        "(said in the output; the daemon does not do this)",
    )
    parser.add_argument(
        "--profile",
        metavar="FILE",
        help="run under cProfile, write the statistics to FILE and print the top functions",
    )
    args = parser.parse_args(argv)
    if args.nodes < GOLD_EVERY:
        parser.error(f"--nodes must be at least {GOLD_EVERY}")
    if any(n < 1 for n in args.tasks):
        parser.error("--tasks must be at least 1")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(stderr=True, soft_wrap=True)
    profiler = cProfile.Profile() if args.profile else None
    notes = []
    if args.repeat > 1:
        notes.append(f"fastest of {args.repeat} runs")
    if args.gc_off_while_building:
        notes.append("cyclic GC disabled while building")
    if profiler is not None:
        notes.append("under cProfile")
    gc_clock = GcClock()
    gc.callbacks.append(gc_clock)
    failed = 0
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    try:
        with Progress(*columns, console=console) as progress:
            for tasks, constrained in cases(args.tasks, args.constraint):
                opts = Options(args.nodes, tasks, constrained, args.gc_off_while_building, profiler)
                bars = Bars.of(progress, opts)
                best: Result | None = None
                for _ in range(args.repeat):
                    bars.reset()
                    gc.collect()  # the previous run's store is garbage: not this run's cost
                    try:
                        result = run_case(opts, bars, gc_clock)
                    except BenchError as e:
                        what = "with" if constrained else "without"
                        console.print(
                            f"[red]schedule: {tasks} tasks {what} the constraint: "
                            f"wrong placement: {e}[/red]",
                            highlight=False,
                        )
                        failed += 1
                        break
                    if best is None or result.total_s < best.total_s:
                        best = result
                else:
                    assert best is not None
                    print(best.line(notes), flush=True)
    finally:
        gc.callbacks.remove(gc_clock)
    if profiler is not None:
        profiler.dump_stats(args.profile)
        stats = pstats.Stats(args.profile, stream=sys.stderr)
        stats.sort_stats(pstats.SortKey.CUMULATIVE).print_stats(PROFILE_TOP)
        stats.sort_stats(pstats.SortKey.TIME).print_stats(PROFILE_TOP)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
