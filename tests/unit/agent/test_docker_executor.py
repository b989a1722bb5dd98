"""The docker executor against a fake engine (fake_engine.py): health-gated start,
unhealthy and destroyed containers, exit status, adoption without a second container,
pulls (one per image, with the task's credentials), ownership by agent label, logs,
and what the node reports.

Nothing sleeps: a test that shows something does not happen first waits for the
executor to have seen the container's state and gone back to waiting for its events
(`until_waiting`); a pull is held back until every task waits on it."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from shoal.agent.executor.base import ExecutorError, ExitStatus
from shoal.agent.executor.docker import ERR_DESTROYED, DockerController, DockerExecutor
from shoal.agent.executor.docker_spec import LABEL_AGENT, LABEL_TASK_ID
from shoal.types.agent import LogOptions
from shoal.types.base import format_time
from shoal.types.meta import TaskMeta
from shoal.types.service import ContainerSpec, HealthConfig, TaskSpec
from shoal.types.task import Task, TaskState, TaskStatus

from .awaiting import suspended_in, until
from .fake_engine import FakeEngine

IMAGE = "busybox:1"
HOSTNAME = "node-a"
# Bound on every wait, so a bug fails a test instead of hanging it.
WAIT_S = 10.0


@pytest.fixture
def engine() -> Iterator[FakeEngine]:
    with tempfile.TemporaryDirectory(prefix="shoal-fe-", dir="/tmp") as tmp:
        fake = FakeEngine(f"{tmp}/docker.sock")
        fake.images.add(IMAGE)
        fake.start()
        try:
            yield fake
        finally:
            fake.stop()


def make_task(
    task_id: str = "task1", slot: int = 1, auth: str | None = None, **spec: Any
) -> tuple[Task, TaskMeta]:
    """A task of service `web`, and the metadata its assignment carries beside it."""
    spec.setdefault("image", IMAGE)
    task = Task(
        id=task_id,
        spec=TaskSpec(container_spec=ContainerSpec(**spec)),
        service_id="svc1",
        slot=slot,
        node_id="node1",
        status=TaskStatus(timestamp="", state=TaskState.ASSIGNED.wire, message=""),
        desired_state=TaskState.RUNNING.wire,
    )
    return task, TaskMeta(service_name="web", registry_auth=auth)


Test = Callable[[DockerExecutor], Awaitable[None]]


def run(engine: FakeEngine, data_dir: Path, test: Test) -> None:
    async def main() -> None:
        executor = DockerExecutor(
            data_dir, HOSTNAME, {"disk": "nvme"}, f"unix://{engine.socket_path}"
        )
        try:
            async with asyncio.timeout(WAIT_S):
                await test(executor)
        finally:
            await executor.close()

    asyncio.run(main())


def only_container(engine: FakeEngine) -> dict[str, Any]:
    (c,) = engine.containers.values()
    return c


async def until_waiting(engine: FakeEngine, pending: asyncio.Future[Any]) -> str:
    """Return (with the container's ID) once the executor, busy with `pending` (a start
    or a wait), has seen the only container running and gone back to waiting for its
    events: after the engine has answered an inspect showing it running, the engine
    replays the container's last event, and the executor asks for its state again (so
    it did not end `pending` on what it saw). Returns at once if `pending` ends first:
    the test's assertions then say what went wrong."""
    cid: str = engine.call(lambda: only_container(engine)["Id"])
    seen: int = engine.call(lambda: engine.running_inspects.get(cid, 0))

    async def inspected(times: int) -> None:
        answered = asyncio.wrap_future(
            engine.when(lambda: engine.running_inspects.get(cid, 0) >= seen + times)
        )
        try:
            await asyncio.wait({answered, pending}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            answered.cancel()

    await inspected(1)
    if not pending.done():
        engine.call(lambda: engine.replay(cid))
        await inspected(2)
    return cid


def test_start_without_healthcheck_runs_named_and_labelled(
    engine: FakeEngine, tmp_path: Path
) -> None:
    async def test(x: DockerExecutor) -> None:
        c = x.controller(*make_task(slot=3))
        await c.prepare()
        rs = await c.start()
        assert rs.running and rs.pid == 4242
        info = only_container(engine)
        assert rs.container_id == info["Id"]
        assert info["Name"] == "/web.3.task1"
        assert info["Config"]["Labels"][LABEL_TASK_ID] == "task1"
        assert info["Config"]["Labels"][LABEL_AGENT] == x.agent_id

    run(engine, tmp_path, test)


def test_start_waits_until_healthy(engine: FakeEngine, tmp_path: Path) -> None:
    async def test(x: DockerExecutor) -> None:
        c = x.controller(*make_task(health_check=HealthConfig(test=["CMD", "true"])))
        await c.prepare()
        starting = asyncio.ensure_future(c.start())
        cid = await until_waiting(engine, starting)
        assert not starting.done()  # running, but not healthy yet
        engine.call(lambda: engine.set_health(cid, "healthy"))
        assert (await starting).running

    run(engine, tmp_path, test)


def test_unhealthy_before_healthy_fails_the_start_and_stops_it(
    engine: FakeEngine, tmp_path: Path
) -> None:
    async def test(x: DockerExecutor) -> None:
        c = x.controller(*make_task(health_check=HealthConfig(test=["CMD", "false"])))
        await c.prepare()
        starting = asyncio.ensure_future(c.start())
        cid = await until_waiting(engine, starting)
        engine.call(lambda: engine.set_health(cid, "unhealthy"))
        with pytest.raises(
            ExecutorError, match=r"^task: non-zero exit \(143\): unhealthy container$"
        ):
            await starting
        assert not only_container(engine)["State"]["Running"]

    run(engine, tmp_path, test)


def test_wait_returns_the_exit_status(engine: FakeEngine, tmp_path: Path) -> None:
    async def test(x: DockerExecutor) -> None:
        c = x.controller(*make_task())
        await c.prepare()
        await c.start()
        waiting = asyncio.ensure_future(c.wait())
        cid = await until_waiting(engine, waiting)
        assert not waiting.done()
        engine.call(lambda: engine.exit(cid, 137, oom=True))
        assert await waiting == ExitStatus(exit_code=137, signal=9, oom_killed=True)

    run(engine, tmp_path, test)


def test_turning_unhealthy_ends_the_task(engine: FakeEngine, tmp_path: Path) -> None:
    async def test(x: DockerExecutor) -> None:
        told: list[str] = []
        x.on_unhealthy = told.append  # the agent takes it out of the backends
        c = x.controller(*make_task(health_check=HealthConfig(test=["CMD", "true"])))
        await c.prepare()
        starting = asyncio.ensure_future(c.start())
        cid = await until_waiting(engine, starting)
        engine.call(lambda: engine.set_health(cid, "healthy"))
        await starting
        waiting = asyncio.ensure_future(c.wait())
        await until_waiting(engine, waiting)
        engine.call(lambda: engine.set_health(cid, "unhealthy"))
        with pytest.raises(ExecutorError, match="unhealthy container"):
            await waiting
        assert not engine.containers[cid]["State"]["Running"]  # stopped by the executor
        assert told == [c.task_id]

    run(engine, tmp_path, test)


def test_a_removed_container_fails_the_wait(engine: FakeEngine, tmp_path: Path) -> None:
    async def test(x: DockerExecutor) -> None:
        c = x.controller(*make_task())
        await c.prepare()
        await c.start()
        waiting = asyncio.ensure_future(c.wait())
        cid = await until_waiting(engine, waiting)
        engine.call(lambda: engine.destroy(cid))
        with pytest.raises(ExecutorError, match=ERR_DESTROYED):
            await waiting

    run(engine, tmp_path, test)


def test_a_new_agent_adopts_instead_of_creating(engine: FakeEngine, tmp_path: Path) -> None:
    async def first(x: DockerExecutor) -> None:
        c = x.controller(*make_task())
        await c.prepare()
        await c.start()

    async def second(x: DockerExecutor) -> None:
        c: DockerController = x.controller(*make_task())
        rs = await c.inspect()
        assert rs.running and rs.container_id == only_container(engine)["Id"]
        await c.prepare()  # again, as after a restart in READY: no second container
        assert len(engine.containers) == 1
        assert x.known_task_ids() == ["task1"]

    run(engine, tmp_path, first)
    run(engine, tmp_path, second)  # same data dir: same agent ID


def test_known_task_ids_are_this_agents_only(engine: FakeEngine, tmp_path: Path) -> None:
    engine.call(
        lambda: engine.add_container(
            "web.1.other", {LABEL_TASK_ID: "other", LABEL_AGENT: "someone"}
        )
    )

    async def test(x: DockerExecutor) -> None:
        await x.controller(*make_task("mine")).prepare()
        assert x.known_task_ids() == ["mine"]

    run(engine, tmp_path, test)


def test_missing_image_is_pulled_once_with_credentials(engine: FakeEngine, tmp_path: Path) -> None:
    engine.pullable["127.0.0.1:5000/app:1"] = "127.0.0.1:5000/app:1"
    engine.hold_pulls()

    async def test(x: DockerExecutor) -> None:
        tasks = [
            make_task(f"t{i}", slot=i, image="127.0.0.1:5000/app:1", auth="e30=") for i in range(5)
        ]
        preparing = [asyncio.create_task(x.controller(*t).prepare()) for t in tasks]
        # The pull finishes once every task has found the image missing and waits for it.
        await until(
            lambda: all(suspended_in(p, DockerExecutor.pull) or p.done() for p in preparing)
        )
        engine.release_pulls()
        await asyncio.gather(*preparing)
        assert engine.pulls == [("127.0.0.1:5000/app", "1", "e30=")]
        assert len(engine.containers) == 5

    run(engine, tmp_path, test)


def test_missing_image_not_pullable_says_why(engine: FakeEngine, tmp_path: Path) -> None:
    async def test(x: DockerExecutor) -> None:
        c = x.controller(*make_task(image="nosuch/image"))
        with pytest.raises(ExecutorError) as e:
            await c.prepare()
        assert str(e.value) == "No such image: nosuch/image (pull: pull access denied)"
        assert engine.pulls == [("nosuch/image", "latest", None)]
        assert not engine.containers

    run(engine, tmp_path, test)


def test_shutdown_uses_the_grace_period_and_remove_deletes(
    engine: FakeEngine, tmp_path: Path
) -> None:
    async def test(x: DockerExecutor) -> None:
        c = x.controller(*make_task())
        await c.prepare()
        await c.start()
        await c.shutdown(2.5)
        assert only_container(engine)["StopTimeout"] == "3"
        await c.remove()
        assert not engine.containers
        await c.remove()  # gone already: nothing to do

    run(engine, tmp_path, test)


def test_logs_with_the_engines_timestamps(engine: FakeEngine, tmp_path: Path) -> None:
    async def test(x: DockerExecutor) -> None:
        c = x.controller(*make_task())
        await c.prepare()
        cid = only_container(engine)["Id"]
        engine.logs[cid] = [
            (1, format_time(1_700_000_000_123_456_789), b"out\n"),
            (2, format_time(1_700_000_001_000_000_000), b"err\n"),
        ]
        got = [(m.stream, m.timestamp_ns, m.data) async for m in c.logs(LogOptions())]
        assert got == [
            (1, 1_700_000_000_123_456_789, b"out\n"),
            (2, 1_700_000_001_000_000_000, b"err\n"),
        ]

    run(engine, tmp_path, test)


def test_describe_from_the_engines_info(engine: FakeEngine, tmp_path: Path) -> None:
    async def test(x: DockerExecutor) -> None:
        d = x.describe()
        assert d.hostname == HOSTNAME
        assert (d.platform.os, d.platform.architecture) == ("linux", "x86_64")
        assert d.resources.nano_cpus == 4_000_000_000 and d.resources.memory_bytes == 8 << 30
        assert d.engine.engine_version == "20.10.24-fake"
        assert d.engine.labels == {"zone": "a", "disk": "nvme"}  # the daemon's --label wins
        plugins = {(p.type, p.name) for p in d.engine.plugins or []}
        assert {("Volume", "local"), ("Network", "overlay"), ("Log", "json-file")} <= plugins

    run(engine, tmp_path, test)
