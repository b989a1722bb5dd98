"""A process task's log: what spec.json tells the shim about it (the driver, the
attributes of its lines, gelf's resolved endpoint) and the shim's log.jsonl read back as
LogMessages, followed while the task runs."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from shoal.agent.executor import gelf, logdriver, shim
from shoal.agent.executor.base import ExecutorError
from shoal.types.agent import LogMessage, LogOptions
from shoal.types.base import format_time, now_ns
from shoal.types.meta import TaskMeta
from shoal.types.service import ContainerSpec
from shoal.types.task import Task

# How often a following log reader looks for new lines.
LOG_POLL_S = 0.15
# Log file reads: the unit of the backward scan for `tail` and the most read at once
# (larger than any record: shim.MAX_LINE_BYTES of data, escaped).
LOG_CHUNK_BYTES = 64 * 1024
LOG_BATCH_BYTES = 1024 * 1024


async def log_config(
    task: Task, meta: TaskMeta, hostname: str, launch: dict[str, Any]
) -> dict[str, Any]:
    """spec.json's `log`: the driver, the extra attributes of its lines (which
    `--details` shows) and, for gelf, the resolved endpoint and the message fields
    (the task plays the container: its ID, its Swarm container name)."""
    spec = task.spec.container_spec or ContainerSpec()
    name, options = logdriver.of_task(task, meta)
    logdriver.validate(name, options, logdriver.PROCESS_DRIVERS)
    t = task
    labels = {
        **(spec.labels or {}),
        "com.docker.swarm.node.id": t.node_id or "",
        "com.docker.swarm.service.id": t.service_id,
        "com.docker.swarm.service.name": meta.service_name,
        "com.docker.swarm.task.id": t.id,
    }
    attrs = logdriver.attributes(options, labels, launch["env"])
    config: dict[str, Any] = {"driver": name, "attrs": attrs}
    if name != logdriver.GELF:
        return config
    scheme, host, port = gelf.parse_address(options["gelf-address"])
    if scheme != "udp":
        raise ExecutorError("gelf: the process runtime sends GELF over UDP only")
    try:
        found = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except OSError as e:
        raise ExecutorError(
            "failed to initialize logging driver: gelf: cannot connect to GELF "
            f"endpoint: {host}:{port}: {e}"
        ) from None
    slot = t.slot if t.slot is not None else t.node_id
    info = {
        "FullID": t.id,
        "Name": f"{meta.service_name}.{slot}.{t.id}",
        "ImageName": spec.image or "",
        "Command": " ".join(launch["argv"]),
        "Created": format_time(now_ns()),
    }
    config.update(
        host=hostname,
        address=[found[0][4][0], port],
        compression=options.get("gelf-compression-type", gelf.DEFAULT_COMPRESSION_TYPE),
        level=int(options.get("gelf-compression-level", gelf.DEFAULT_COMPRESSION_LEVEL)),
        extra=logdriver.gelf_extra(info, options, attrs),
    )
    return config


def log_attrs(task_dir: Path) -> dict[str, str]:
    """The extra attributes of the task's log lines, from its spec.json."""
    try:
        launch = json.loads((task_dir / shim.SPEC_FILE).read_bytes())
        return {str(k): str(v) for k, v in (launch.get("log") or {})["attrs"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


class TaskLog:
    """Reads one task's log.jsonl (in `task_dir`) as LogMessages."""

    def __init__(self, task_dir: Path, task_id: str) -> None:
        self.task_dir = task_dir
        self.task_id = task_id
        self._attrs: dict[str, str] | None = None  # of the log lines (read())

    async def read(
        self, options: LogOptions, finished: Callable[[], bool]
    ) -> AsyncIterator[LogMessage]:
        """The wanted messages; following, until `finished()` says the task has ended."""
        streams = {
            s for s, on in ((shim.STDOUT, options.stdout), (shim.STDERR, options.stderr)) if on
        }
        if not streams:
            return
        since, until = options.since_ns, options.until_ns

        def wanted(ts: int, stream: int) -> bool:
            return stream in streams and ts >= since and (not until or ts <= until)

        self._attrs = log_attrs(self.task_dir) or None
        path = self.task_dir / shim.LOG_FILE
        offset = 0
        if options.tail is not None and options.tail >= 0:
            messages, offset = self._tail(path, options.tail, wanted)
            for message in messages:
                yield message
        while True:
            # Decided before reading: once the task has exited, its log is complete.
            done = not options.follow or finished()
            while True:
                messages, offset, read, past_until = self._read_batch(path, offset, wanted, until)
                for message in messages:
                    yield message
                if past_until and options.follow:
                    return
                if not read:
                    break
            if done or (until and time.time_ns() > until):
                return
            await asyncio.sleep(LOG_POLL_S)

    def _message(self, line: bytes) -> LogMessage | None:
        try:
            ts, stream, data = shim.decode_record(line)
        except ValueError:
            return None  # a line torn by a crash: skip it rather than end the stream
        return LogMessage(
            task_id=self.task_id, timestamp_ns=ts, stream=stream, data=data, attrs=self._attrs
        )

    def _tail(
        self, path: Path, n: int, wanted: Callable[[int, int], bool]
    ) -> tuple[list[LogMessage], int]:
        """The last `n` wanted messages, scanning the file backwards, and the offset
        where the complete lines end (where following continues)."""
        try:
            f = path.open("rb")
        except FileNotFoundError:
            return [], 0
        with f:
            size = f.seek(0, os.SEEK_END)
            end = 0
            pos = size
            while pos > 0:  # the end of the last complete line
                start = max(0, pos - LOG_CHUNK_BYTES)
                f.seek(start)
                newline = f.read(pos - start).rfind(b"\n")
                if newline >= 0:
                    end = start + newline + 1
                    break
                pos = start
            found: list[LogMessage] = []
            pos, carry = end, b""
            while pos > 0 and len(found) < n:
                start = max(0, pos - LOG_CHUNK_BYTES)
                f.seek(start)
                lines = (f.read(pos - start) + carry).split(b"\n")
                pos = start
                carry = lines.pop(0) if start > 0 else b""
                for line in reversed(lines):
                    message = self._message(line) if line else None
                    if message is not None and wanted(message.timestamp_ns, message.stream):
                        found.append(message)
                        if len(found) == n:
                            break
            found.reverse()
            return found, end

    def _read_batch(
        self, path: Path, offset: int, wanted: Callable[[int, int], bool], until: int
    ) -> tuple[list[LogMessage], int, bool, bool]:
        """Wanted messages of the complete lines after `offset` (up to LOG_BATCH_BYTES):
        (messages, new offset, whether anything was read, whether a line came after
        `until`)."""
        try:
            with path.open("rb") as f:
                f.seek(offset)
                data = f.read(LOG_BATCH_BYTES)
        except FileNotFoundError:
            return [], offset, False, False
        end = data.rfind(b"\n") + 1
        messages = []
        past_until = False
        for line in data[:end].split(b"\n"):
            message = self._message(line) if line else None
            if message is None:
                continue
            if wanted(message.timestamp_ns, message.stream):
                messages.append(message)
            elif until and message.timestamp_ns > until:
                past_until = True
        return messages, offset + end, end > 0, past_until
