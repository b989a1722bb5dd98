"""The process executor with real processes: shims, signals, logs, adoption.

Every test stops what it started; an autouse fixture then checks that no shim of the
test is left and that no child of the test process is left unreaped.

Nothing sleeps: a process's exit is awaited through a pidfd, and a test that shows a
wait does not end waits until the waiter blocks on the shim's exit (awaiting.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
import zlib
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

import shoal
from shoal.agent.executor import shim, spawner
from shoal.agent.executor.base import ExecutorError, ExitStatus
from shoal.agent.executor.process import ProcessExecutor
from shoal.agent.executor.process_spec import DEFAULT_PATH, NO_COMMAND_ERROR, parse_signal
from shoal.agent.executor.process_task import ProcessController
from shoal.agent.executor.process_taskdir import TaskDir
from shoal.types.agent import LogMessage, LogOptions
from shoal.types.service import ContainerSpec, TaskSpec
from shoal.types.task import Task, TaskState, TaskStatus

from .awaiting import all_exited, exited, open_pidfds, suspended_in, until

HOSTNAME = "node-1"
# Bound on every wait in these tests, so a bug fails a test instead of hanging it.
WAIT_S = 10.0
# The longest log line, as Docker's log drivers cut them (16 KiB); longer lines come in
# several messages.
LOG_LINE_BYTES = 16 * 1024


def make_task(task_id: str = "task1", **spec: Any) -> Task:
    container_spec = ContainerSpec(image="busybox", **spec)
    return Task(
        id=task_id,
        spec=TaskSpec(container_spec=container_spec),
        status=TaskStatus(timestamp="", state=TaskState.ASSIGNED.wire, message=""),
        desired_state=TaskState.RUNNING.wire,
    )


class Tasks:
    """Makes controllers and stops every one of them at the end of the test."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.executors: list[ProcessExecutor] = []
        self.controllers: list[ProcessController] = []
        self.executor = self.new_executor()

    def new_executor(self) -> ProcessExecutor:
        executor = ProcessExecutor(self.data_dir, HOSTNAME, {"zone": "a"})
        self.executors.append(executor)
        return executor

    def controller(self, task: Task, executor: ProcessExecutor | None = None) -> ProcessController:
        controller = (executor or self.executor).controller(task)
        self.controllers.append(controller)
        return controller

    async def start(self, task_id: str = "task1", **spec: Any) -> ProcessController:
        controller = self.controller(make_task(task_id, **spec))
        await controller.prepare()
        await controller.start()
        return controller

    async def cleanup(self) -> None:
        for controller in self.controllers:
            await controller.shutdown(0)
        for executor in self.executors:
            await executor.close()


def run(tmp_path: Path, body: Callable[[Tasks], Awaitable[None]]) -> None:
    async def main() -> None:
        tasks = Tasks(tmp_path / "data")
        try:
            await body(tasks)
        finally:
            await tasks.cleanup()

    asyncio.run(main())


async def wait(controller: ProcessController) -> ExitStatus:
    return await asyncio.wait_for(controller.wait(), WAIT_S)


async def wait_log_line(controller: ProcessController, line: bytes) -> None:
    """Wait until the task has written `line` (a sign it got that far)."""

    async def follow() -> None:
        async for message in controller.logs(LogOptions(follow=True)):
            if message.data == line:
                return

    await asyncio.wait_for(follow(), WAIT_S)


async def collect(controller: ProcessController, **options: object) -> list[LogMessage]:
    async def read() -> list[LogMessage]:
        return [m async for m in controller.logs(LogOptions(**options))]  # type: ignore[arg-type]

    return await asyncio.wait_for(read(), WAIT_S)


def texts(messages: list[LogMessage]) -> list[bytes]:
    return [m.data for m in messages]


def proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


def proc_argv(pid: int) -> list[bytes]:
    # Not the Name in status: exec closes the pipe by which the shim learns that the
    # exec worked a moment before it renames the process.
    return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]


def proc_environ(pid: int) -> list[bytes]:
    return Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie waiting for whoever adopted it does not)."""
    try:
        return proc_status(pid)["State"][0] != "Z"
    except FileNotFoundError:
        return False


def _start_ticks(pid: int) -> int | None:
    """The start time of `pid` in clock ticks since boot, None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def _now_ticks() -> int:
    return int(float(Path("/proc/uptime").read_text().split()[0]) * os.sysconf("SC_CLK_TCK"))


def _recorded_task_pids(root: Path, since_ticks: int) -> list[int]:
    """The task processes the test's shims recorded (`<task dir>/pid`) that still run:
    their command lines do not name the data dir, so only these files find them. A pid
    that started before the test is another process that reused the number."""
    out = []
    for pid_file in root.rglob(shim.PID_FILE):
        try:
            pid = int(pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        started = _start_ticks(pid)
        if started is not None and started >= since_ticks and alive(pid):
            out.append(pid)
    return out


@pytest.fixture(autouse=True)
def no_leftover_processes(tmp_path: Path) -> Iterator[None]:
    """Fails a test that leaves a shim or a task process running, or a child unreaped,
    and kills what it left all the same (a failing test must not leak `sleep 1000`)."""
    since = _now_ticks() - 1
    yield
    marker = os.fsencode(tmp_path)
    leftovers: dict[int, bytes] = {}
    zombies = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if marker in cmdline:
            leftovers[int(entry.name)] = cmdline
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] == "Z" and int(fields[1]) == os.getpid():
            zombies.append(entry.name)
    for pid in _recorded_task_pids(tmp_path, since):
        leftovers.setdefault(pid, Path(f"/proc/{pid}/cmdline").read_bytes())
    # Opened before the kill: a pidfd stays the process's, whatever reuses its pid.
    pidfds = open_pidfds(leftovers)
    for pid in leftovers:
        try:
            # a task process leads its own group: its children go with it
            if os.getpgid(pid) == pid:
                os.killpg(pid, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    all_exited(pidfds, WAIT_S)
    assert not leftovers, f"left running (killed now): {leftovers}"
    assert not zombies, zombies


# --- start, wait, inspect ----------------------------------------------------------------


def test_exit_zero(tmp_path: Path) -> None:
    async def body(tasks: Tasks) -> None:
        controller = tasks.controller(make_task(args=["true"]))
        assert (await controller.inspect()).exists is False
        await controller.prepare()
        state = await controller.start()
        assert state.exists and state.running and state.pid
        assert await wait(controller) == ExitStatus(exit_code=0)
        state = await controller.inspect()
        assert state.exists and not state.running
        assert state.exit == ExitStatus(exit_code=0)
        # Starting again does not run the task twice.
        assert (await controller.start()).exit == ExitStatus(exit_code=0)

    run(tmp_path, body)


def test_exit_code(tmp_path: Path) -> None:
    async def body(tasks: Tasks) -> None:
        controller = await tasks.start(command=["sh", "-c"], args=["exit 3"])
        assert await wait(controller) == ExitStatus(exit_code=3)

    run(tmp_path, body)


def test_command_then_args(tmp_path: Path) -> None:
    async def body(tasks: Tasks) -> None:
        controller = await tasks.start(command=["sh", "-c", 'echo "$0-$1"'], args=["a", "b"])
        await wait(controller)
        assert texts(await collect(controller)) == [b"a-b\n"]

    run(tmp_path, body)


def test_start_without_prepare(tmp_path: Path) -> None:
    async def body(tasks: Tasks) -> None:
        controller = tasks.controller(make_task(args=["true"]))
        assert (await controller.start()).running
        assert await wait(controller) == ExitStatus(exit_code=0)

    run(tmp_path, body)


def test_env_workdir_hostname(tmp_path: Path) -> None:
    script = 'pwd; echo "$FOO"; echo "$HOSTNAME"; echo "$HOME"; echo "$PATH"'

    async def body(tasks: Tasks) -> None:
        first = await tasks.start(
            "custom",
            args=["sh", "-c", script],
            env=["FOO=bar=baz", "IGNORED"],
            dir=str(tmp_path),
            hostname="web-1",
        )
        second = await tasks.start("default", args=["sh", "-c", script])
        await wait(first)
        await wait(second)
        assert texts(await collect(first)) == [
            f"{tmp_path}\n".encode(),
            b"bar=baz\n",
            b"web-1\n",
            b"/root\n",
            f"{DEFAULT_PATH}\n".encode(),
        ]
        assert texts(await collect(second))[:3] == [b"/\n", b"\n", f"{HOSTNAME}\n".encode()]

    run(tmp_path, body)


def test_env_templates_are_expanded(tmp_path: Path) -> None:
    """Swarm's placeholders in the environment's values, as `--env T={{.Task.ID}}`."""

    async def body(tasks: Tasks) -> None:
        task = await tasks.start(
            "tpl-task",
            args=["sh", "-c", 'echo "$T $N"'],
            env=["T={{.Task.ID}}", "N=node {{.Node.Hostname}}"],
        )
        await wait(task)
        assert texts(await collect(task)) == [f"tpl-task node {HOSTNAME}\n".encode()]

    run(tmp_path, body)


@pytest.mark.skipif(os.geteuid() != 0, reason="changing user needs root")
@pytest.mark.parametrize("user", ["nobody", "65534", "65534:65534", "nobody:nogroup"])
def test_user(tmp_path: Path, user: str) -> None:
    async def body(tasks: Tasks) -> None:
        controller = await tasks.start(args=["sleep", "1000"], user=user)
        pid = (await controller.inspect()).pid
        assert pid is not None
        status = proc_status(pid)
        assert status["Uid"].split() == ["65534"] * 4
        assert status["Gid"].split() == ["65534"] * 4
        assert status["Groups"].split() == ["65534"]
        assert b"HOME=/nonexistent" in proc_environ(pid)
        await controller.shutdown(5)

    run(tmp_path, body)


# --- logs --------------------------------------------------------------------------------


def test_logs_streams_tail_and_timestamps(tmp_path: Path) -> None:
    script = "echo out1; echo err1 >&2; sleep 0.05; echo out2; printf partial"

    async def body(tasks: Tasks) -> None:
        before = time.time_ns()
        controller = await tasks.start(args=["sh", "-c", script])
        await wait(controller)
        after = time.time_ns()

        everything = await collect(controller)
        assert sorted(texts(everything)) == sorted([b"out1\n", b"err1\n", b"out2\n", b"partial"])
        assert all(m.task_id == "task1" for m in everything)
        assert all(before <= m.timestamp_ns <= after for m in everything)

        stdout = await collect(controller, stderr=False)
        assert texts(stdout) == [b"out1\n", b"out2\n", b"partial"]
        assert {m.stream for m in stdout} == {1}
        assert stdout[0].timestamp_ns < stdout[1].timestamp_ns <= stdout[2].timestamp_ns
        stderr = await collect(controller, stdout=False)
        assert texts(stderr) == [b"err1\n"] and stderr[0].stream == 2

        assert texts(await collect(controller, stderr=False, tail=2)) == [b"out2\n", b"partial"]
        assert texts(await collect(controller, tail=0)) == []
        assert len(await collect(controller, tail=100)) == 4
        assert await collect(controller, stdout=False, stderr=False) == []

        out2 = stdout[1].timestamp_ns
        since = await collect(controller, stderr=False, since_ns=out2)
        assert texts(since) == [b"out2\n", b"partial"]
        until = await collect(controller, stderr=False, until_ns=stdout[0].timestamp_ns)
        assert texts(until) == [b"out1\n"]

    run(tmp_path, body)


def test_logs_binary_and_long_lines(tmp_path: Path) -> None:
    script = r"printf '\377\001x\n'; head -c 40000 /dev/zero | tr '\0' y; echo"

    async def body(tasks: Tasks) -> None:
        controller = await tasks.start(args=["sh", "-c", script])
        await wait(controller)
        messages = await collect(controller)
        assert messages[0].data == b"\xff\x01x\n"
        # Lines longer than 16 KiB are split as Docker's log driver splits them.
        assert [len(m.data) for m in messages[1:]] == [LOG_LINE_BYTES, LOG_LINE_BYTES, 7233]
        assert b"".join(texts(messages[1:])) == b"y" * 40000 + b"\n"
        # The backward scan for `tail` crosses chunk boundaries the same way.
        assert texts(await collect(controller, tail=len(messages))) == texts(messages)

    run(tmp_path, body)


def test_logs_follow(tmp_path: Path) -> None:
    async def body(tasks: Tasks) -> None:
        controller = await tasks.start(args=["sh", "-c", "echo a; sleep 0.4; echo b"])
        started = time.monotonic()
        messages = await collect(controller, follow=True)
        assert texts(messages) == [b"a\n", b"b\n"]
        assert time.monotonic() - started >= 0.3
        # With a tail, following starts after the last lines.
        assert texts(await collect(controller, follow=True, tail=1)) == [b"b\n"]

    run(tmp_path, body)


def test_logs_follow_consumer_stops(tmp_path: Path) -> None:
    async def body(tasks: Tasks) -> None:
        controller = await tasks.start(args=["sh", "-c", "echo hi; sleep 1000"])
        stream = controller.logs(LogOptions(follow=True))
        first = await asyncio.wait_for(anext(stream), WAIT_S)
        assert first.data == b"hi\n"
        await stream.aclose()  # type: ignore[attr-defined]
        await controller.shutdown(5)

    run(tmp_path, body)


# --- shutdown ----------------------------------------------------------------------------


def test_shutdown_sigterm(tmp_path: Path) -> None:
    async def body(tasks: Tasks) -> None:
        controller = await tasks.start(args=["sleep", "1000"])
        pid = (await controller.inspect()).pid
        assert pid is not None and proc_argv(pid) == [b"sleep", b"1000"]
        assert os.getpgid(pid) == pid  # its own process group
        started = time.monotonic()
        await controller.shutdown(5)
        assert time.monotonic() - started < 2
        assert await wait(controller) == ExitStatus(exit_code=143, signal=signal.SIGTERM)
        assert not (await controller.inspect()).running
        await controller.shutdown(5)  # idempotent

    run(tmp_path, body)


def test_shutdown_kills_after_grace(tmp_path: Path) -> None:
    async def body(tasks: Tasks) -> None:
        script = 'trap "" TERM; echo armed; sleep 1000'
        controller = await tasks.start(args=["sh", "-c", script])
        await wait_log_line(controller, b"armed\n")  # the trap is set before the echo
        started = time.monotonic()
        await controller.shutdown(0.5)
        assert 0.5 <= time.monotonic() - started < 3
        assert await wait(controller) == ExitStatus(exit_code=137, signal=signal.SIGKILL)

    run(tmp_path, body)


def test_stop_signal(tmp_path: Path) -> None:
    assert parse_signal(None) == signal.SIGTERM
    assert parse_signal("SIGTERM") == parse_signal("TERM") == parse_signal("15")
    assert parse_signal("sigint") == signal.SIGINT
    with pytest.raises(ExecutorError, match="invalid stop signal"):
        parse_signal("SIGNOPE")

    async def body(tasks: Tasks) -> None:
        controller = await tasks.start(args=["sleep", "1000"], stop_signal="SIGUSR1")
        await controller.shutdown(5)
        assert await wait(controller) == ExitStatus(128 + signal.SIGUSR1, signal.SIGUSR1)

    run(tmp_path, body)


def _children_of(pid: int) -> list[int]:
    """Host pids of the processes whose parent is `pid`."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(stat[1]) == pid:
                found.append(int(entry))
    return found


def _is_sleep_1000(pid: int) -> bool:
    try:
        return proc_argv(pid) == [b"sleep", b"1000"]
    except OSError:
        return False


def test_leftover_processes_die_with_the_task(tmp_path: Path) -> None:
    """A process the task leaves behind dies with it. Found by its parent from the
    host: in a pid namespace, the pid the task sees (`$!`) is not the host's."""
    flag = tmp_path / "go"
    script = f"sleep 1000 & echo started; while [ ! -e {flag} ]; do sleep 0.02; done"

    async def body(tasks: Tasks) -> None:
        controller = await tasks.start(args=["sh", "-c", script])
        await wait_log_line(controller, b"started\n")
        pid = (await controller.inspect()).pid
        assert pid is not None
        # forked, perhaps not yet exec'd: wait for the leftover sleep to run
        await until(lambda: any(_is_sleep_1000(c) for c in _children_of(pid)))
        (leftover,) = [c for c in _children_of(pid) if _is_sleep_1000(c)]
        flag.touch()
        assert await wait(controller) == ExitStatus(exit_code=0)
        with contextlib.suppress(TimeoutError):
            await exited(leftover, WAIT_S)
        assert not alive(leftover)

    run(tmp_path, body)


def test_remove(tmp_path: Path) -> None:
    async def body(tasks: Tasks) -> None:
        controller = await tasks.start(args=["sleep", "1000"])
        assert tasks.executor.known_task_ids() == ["task1"]
        await controller.remove()
        assert (await controller.inspect()).exists is False
        assert tasks.executor.known_task_ids() == []
        await controller.remove()

    run(tmp_path, body)


# --- adoption after an agent restart -------------------------------------------------


def test_adoption_by_a_new_executor(tmp_path: Path) -> None:
    async def body(tasks: Tasks) -> None:
        first = await tasks.start(args=["sleep", "1000"])
        pid = (await first.inspect()).pid
        await tasks.executor.close()

        executor = tasks.new_executor()
        assert executor.known_task_ids() == ["task1"]
        adopted = tasks.controller(make_task(args=["sleep", "1000"]), executor)
        state = await adopted.inspect()
        assert state.running and state.pid == pid
        assert (await adopted.start()).pid == pid  # no second process
        waiter = asyncio.create_task(adopted.wait())
        # Until it waits for the shim's exit (or, wrongly, returns without).
        await until(lambda: waiter.done() or suspended_in(waiter, TaskDir.wait_shim_exit))
        assert not waiter.done()
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        assert await asyncio.wait_for(waiter, WAIT_S) == ExitStatus(137, signal.SIGKILL)

    run(tmp_path, body)


AGENT_SCRIPT = """
import asyncio, pathlib, sys
import msgspec
from shoal.agent.executor.process import ProcessExecutor
from shoal.types.service import ContainerSpec, TaskSpec
from shoal.types.task import stub_task

async def main():
    executor = ProcessExecutor(pathlib.Path(sys.argv[1]), "node-1", {})
    spec = TaskSpec(container_spec=ContainerSpec(args=["sleep", "1000"]))
    task = msgspec.structs.replace(stub_task("task1"), spec=spec)
    controller = executor.controller(task)
    await controller.prepare()
    state = await controller.start()
    print(state.pid, flush=True)
    await asyncio.Event().wait()  # until the test kills it

asyncio.run(main())
"""


def test_task_survives_kill_9_of_the_agent(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    agent = subprocess.Popen(
        [sys.executable, "-c", AGENT_SCRIPT, str(data_dir)],
        stdout=subprocess.PIPE,
        cwd=Path(shoal.__file__).parent.parent,
    )
    try:
        assert agent.stdout is not None
        # Bounded: an agent that dies or hangs before printing fails the test, not hangs it.
        ready, _, _ = select.select([agent.stdout], [], [], WAIT_S)
        assert ready, f"the agent printed no pid within {WAIT_S}s"
        pid = int(agent.stdout.readline())
    finally:
        agent.kill()
        agent.wait()
        if agent.stdout is not None:
            agent.stdout.close()

    async def body(tasks: Tasks) -> None:
        controller = tasks.controller(make_task(args=["sleep", "1000"]))
        state = await controller.inspect()
        assert state.running and state.pid == pid
        assert proc_argv(pid) == [b"sleep", b"1000"]
        await controller.shutdown(5)
        assert await wait(controller) == ExitStatus(143, signal.SIGTERM)

    run(tmp_path, body)


# --- tasks that can never run ------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        ({}, NO_COMMAND_ERROR),
        ({"command": [], "args": []}, "the process runtime runs the service's command"),
        (
            {"args": ["no-such-command-xyz"]},
            "executable file not found in $PATH: no-such-command-xyz",
        ),
        ({"args": ["/no/such/file"]}, "exec /no/such/file: no such file or directory"),
        ({"args": ["true"], "user": "no-such-user"}, "unable to find user no-such-user"),
        ({"args": ["true"], "user": "nobody:no-such-group"}, "unable to find group no-such-group"),
        (
            {"args": ["true"], "dir": "/no/such/dir"},
            "working directory /no/such/dir does not exist",
        ),
        ({"args": ["true"], "dir": "relative"}, "needs to be an absolute path"),
        ({"args": ["true"], "stop_signal": "SIGNOPE"}, "invalid stop signal: SIGNOPE"),
    ],
)
def test_prepare_rejects(tmp_path: Path, spec: dict[str, Any], error: str) -> None:
    async def body(tasks: Tasks) -> None:
        controller = tasks.controller(make_task(**spec))
        with pytest.raises(ExecutorError) as info:
            await controller.prepare()
        assert error in str(info.value)

    run(tmp_path, body)


def test_exec_failure_at_start(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x00\x01\x02 not a program")
    bad.chmod(0o755)

    async def body(tasks: Tasks) -> None:
        controller = tasks.controller(make_task(args=[str(bad)]))
        await controller.prepare()
        with pytest.raises(ExecutorError, match="Exec format error"):
            await controller.start()
        state = await controller.inspect()
        assert not state.running and state.exit == ExitStatus(exit_code=126)

    run(tmp_path, body)


def test_describe(tmp_path: Path) -> None:
    description = ProcessExecutor(tmp_path, HOSTNAME, {"zone": "a"}).describe()
    assert description.hostname == HOSTNAME
    assert description.platform.os == "linux"
    assert description.platform.architecture == os.uname().machine
    assert description.resources.nano_cpus == (os.cpu_count() or 0) * 1_000_000_000
    assert description.resources.memory_bytes > 0
    assert description.engine.engine_version == shoal.__version__
    assert description.engine.labels == {"zone": "a"}
    # the log drivers it runs, for the scheduler's plugin filter
    plugins = {(p.type, p.name) for p in description.engine.plugins or []}
    assert plugins == {("Log", "json-file"), ("Log", "gelf")}


def _task_with_log_driver(driver: dict[str, Any], **spec: Any) -> Task:
    task = make_task(**spec)
    return msgspec.structs.replace(
        task, spec=msgspec.structs.replace(task.spec, log_driver=driver), service_id="svc1"
    )


def test_the_gelf_driver_sends_each_line_to_the_endpoint_and_keeps_the_local_log(
    tmp_path: Path,
) -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", 0))
    listener.setblocking(False)
    options = {
        "gelf-address": f"udp://127.0.0.1:{listener.getsockname()[1]}",
        "gelf-compression-type": "zlib",
        "env": "WHO",
    }
    task = _task_with_log_driver(
        {"Name": "gelf", "Options": options},
        command=["sh", "-c", "echo hello $WHO; echo oops >&2"],
        env=["WHO=world"],
    )

    async def body(tasks: Tasks) -> None:
        controller = tasks.controller(task)
        await controller.prepare()
        await controller.start()
        assert (await wait(controller)).exit_code == 0
        loop = asyncio.get_running_loop()
        got = [
            json.loads(
                zlib.decompress(await asyncio.wait_for(loop.sock_recv(listener, 65536), WAIT_S))
            )
            for _ in range(2)
        ]
        got.sort(key=lambda m: m["level"], reverse=True)
        assert [(m["short_message"], m["level"]) for m in got] == [("hello world", 6), ("oops", 3)]
        for m in got:
            assert m["version"] == "1.1" and m["host"] == HOSTNAME
            assert m["_container_id"] == task.id and m["_tag"] == task.id[:12]
            assert m["_command"] == "sh -c echo hello $WHO; echo oops >&2"
            assert m["_image_name"] == "busybox" and m["_WHO"] == "world"
        # The local log stays (Docker's dual logging), with the attributes for --details.
        messages = await collect(controller)
        assert [m.data for m in messages if m.stream == 1] == [b"hello world\n"]
        assert messages[0].attrs == {"WHO": "world"}

    try:
        run(tmp_path, body)
    finally:
        listener.close()


def test_an_unsupported_log_driver_is_refused_with_dockers_message(tmp_path: Path) -> None:
    async def body(tasks: Tasks) -> None:
        for driver, error in [
            ({"Name": "syslog"}, "logger: no log driver named 'syslog' is registered"),
            ({"Name": "gelf", "Options": {}}, "gelf-address is a required parameter"),
            (
                {"Name": "gelf", "Options": {"gelf-address": "tcp://127.0.0.1:1"}},
                "over UDP only",
            ),
        ]:
            controller = tasks.controller(_task_with_log_driver(driver, command=["true"]))
            with pytest.raises(ExecutorError, match=error):
                await controller.prepare()

    run(tmp_path, body)


def test_the_none_driver_keeps_no_log(tmp_path: Path) -> None:
    async def body(tasks: Tasks) -> None:
        controller = tasks.controller(
            _task_with_log_driver({"Name": "none"}, command=["echo", "hi"])
        )
        await controller.prepare()
        await controller.start()
        assert (await wait(controller)).exit_code == 0
        assert await collect(controller) == []

    run(tmp_path, body)


# --- the shim launcher (launcher.py, spawner.py) ------------------------------------------


def shim_pid_of(executor: ProcessExecutor, task_id: str) -> int:
    return int((executor.tasks_dir / task_id / shim.SHIM_PID_FILE).read_text().split()[0])


def test_shims_are_forked_by_one_launcher_and_outlive_it(tmp_path: Path) -> None:
    async def body(tasks: Tasks) -> None:
        executor = tasks.executor
        assert executor.launcher is not None
        await executor.warm()
        launcher_pid = executor.launcher.pid
        assert launcher_pid is not None
        a = await tasks.start("task-a", args=["sleep", "1000"])
        b = await tasks.start("task-b", args=["sh", "-c", "echo hello; exit 4"])
        shims = [shim_pid_of(executor, t) for t in ("task-a", "task-b")]
        assert executor.launcher.statistics() == {"started": 1, "spawned": 2}
        pid_a = (await a.inspect()).pid
        assert pid_a is not None
        assert int(proc_status(shims[0])["PPid"]) == launcher_pid
        assert os.getsid(shims[0]) == shims[0]  # a session of its own, as before
        assert proc_argv(pid_a) == [b"sleep", b"1000"]
        # A shim of the launcher is the shim: exit status and log as ever.
        assert await wait(b) == ExitStatus(exit_code=4)
        assert [m.data for m in await collect(b, stdout=True)] == [b"hello\n"]
        # The launcher goes (the agent stops): its shims and their tasks go on.
        await executor.launcher.close()
        assert not alive(launcher_pid)
        assert alive(shims[0]) and alive(pid_a)
        assert (await a.inspect()).running
        await a.shutdown(5)
        assert await wait(a) == ExitStatus(143, signal.SIGTERM)

    run(tmp_path, body)


def test_a_launcher_that_died_is_started_again(tmp_path: Path) -> None:
    async def body(tasks: Tasks) -> None:
        executor = tasks.executor
        assert executor.launcher is not None
        await executor.warm()
        first = executor.launcher.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)  # our own child, by its pid
        await exited(first)  # found dead (a zombie) by the next spawn: no request lost
        controller = await tasks.start("task-c", args=["true"])
        assert await wait(controller) == ExitStatus(exit_code=0)
        assert executor.launcher.statistics() == {"started": 2, "spawned": 1}
        assert executor.launcher.pid not in (None, first)

    run(tmp_path, body)


def test_without_the_launcher_each_shim_is_an_interpreter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHOAL_SHIM_LAUNCHER", "0")

    async def body(tasks: Tasks) -> None:
        assert tasks.executor.launcher is None
        controller = await tasks.start("task-d", args=["sleep", "1000"])
        shim_pid = shim_pid_of(tasks.executor, "task-d")
        assert int(proc_status(shim_pid)["PPid"]) == os.getpid()
        assert b"shim.py" in b" ".join(proc_argv(shim_pid))
        await controller.shutdown(5)
        assert await wait(controller) == ExitStatus(143, signal.SIGTERM)

    run(tmp_path, body)


def test_a_request_the_launcher_died_with_is_not_sent_again(tmp_path: Path) -> None:
    """Sent, then the launcher died unanswering: a shim may have been forked, so the
    request is lost (LauncherLost), never retried nor spawned another way; the next
    request starts a new launcher."""

    async def body(tasks: Tasks) -> None:
        launcher = tasks.executor.launcher
        assert launcher is not None
        await launcher.ensure()
        first = launcher.pid
        assert first is not None
        task_dir = tasks.executor.tasks_dir / "task-e"
        task_dir.mkdir(parents=True)
        os.kill(first, signal.SIGSTOP)  # it cannot read the request
        request = asyncio.ensure_future(launcher.spawn(task_dir))
        await until(lambda: suspended_in(request, asyncio.StreamReader.readline))
        os.kill(first, signal.SIGKILL)
        with pytest.raises(spawner.LauncherLost):
            await asyncio.wait_for(request, WAIT_S)
        assert list(task_dir.iterdir()) == []  # no shim ran for it
        assert launcher.statistics() == {"started": 1, "spawned": 0}
        controller = await tasks.start("task-f", args=["true"])
        assert await wait(controller) == ExitStatus(exit_code=0)
        assert launcher.statistics() == {"started": 2, "spawned": 1}

    run(tmp_path, body)


def test_the_answer_to_a_cancelled_request_is_not_the_next_ones(tmp_path: Path) -> None:
    """A spawn cancelled with its request out (a task told to stop while it started):
    the launcher still forks that shim and answers later; the next spawn skips that
    answer and returns its own shim's pid, not the cancelled one's."""

    async def body(tasks: Tasks) -> None:
        launcher = tasks.executor.launcher
        assert launcher is not None
        await launcher.ensure()
        pid = launcher.pid
        assert pid is not None
        first, second = (tasks.executor.tasks_dir / t for t in ("task-g", "task-h"))
        for d in (first, second):
            d.mkdir(parents=True)
        os.kill(pid, signal.SIGSTOP)  # the request waits, unanswered
        try:
            request = asyncio.ensure_future(launcher.spawn(first))
            await until(lambda: suspended_in(request, asyncio.StreamReader.readline))
            request.cancel()
            with pytest.raises(asyncio.CancelledError):
                await request
        finally:
            os.kill(pid, signal.SIGCONT)
        shim_pid = await asyncio.wait_for(launcher.spawn(second), WAIT_S)
        # each shim records its pid first thing (it then fails: these have no spec)
        await until(lambda: (second / shim.SHIM_PID_FILE).exists())
        assert (second / shim.SHIM_PID_FILE).read_text().split()[0] == str(shim_pid)
        await until(lambda: (first / shim.SHIM_PID_FILE).exists())
        assert (first / shim.SHIM_PID_FILE).read_text().split()[0] != str(shim_pid)
        assert launcher.statistics() == {"started": 1, "spawned": 1}

    run(tmp_path, body)
