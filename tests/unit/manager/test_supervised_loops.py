"""Every control loop survives a round that raises: the failure is logged with the
loop's name and counted in its statistics(), and the loop goes on (after a resync and a
backoff), so the cluster still converges. Driven on a FakeClock (see sim.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from shoal.manager.orchestrator import update
from shoal.types.task import TaskState

from .sim import Sim

SETTLE_S = 1.0


class Boom(Exception):
    """The injected failure."""


def failing_once(fn: Callable[..., Any]) -> Callable[..., Any]:
    calls = 0

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise Boom("injected")
        return fn(*args, **kwargs)

    return wrapper


# (component attribute on the Manager, method that handles one round of events,
#  statistics key that counts failed rounds, the loop name in the log)
LOOPS = [
    ("scheduler", "apply", "failures", "scheduler"),
    ("reaper", "_note_events", "failures", "reaper"),
    ("restarts", "_handle", "failures", "restarts"),
    ("dispatcher", "_route_events", "route_failures", "route"),
]


@pytest.mark.parametrize(("component", "method", "key", "name"), LOOPS, ids=[x[0] for x in LOOPS])
def test_a_loop_goes_on_after_a_failed_round(
    component: str, method: str, key: str, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        async with Sim() as sim:
            loop = getattr(sim.manager, component)
            setattr(loop, method, failing_once(getattr(loop, method)))
            sid = await sim.create(replicas=2)
            await sim.advance(SETTLE_S)
            await sim.update(sid, env=["V=2"])  # held tasks, shut-down tasks, new ones
            await sim.advance(SETTLE_S * 2 + 5)
            assert loop.statistics()[key] == 1
            version = sim.spec_version(sid)
            running = sim.running(sid)
            assert len(running) == 2 and {sim.version_of(t) for t in running} == {version}
            assert sim.status(sid) == update.COMPLETED

    asyncio.run(main())
    failed = [r for r in caplog.records if r.getMessage().endswith("; resyncing")]
    failed += [r for r in caplog.records if r.getMessage().endswith("; continuing")]
    assert [r.fields["loop"] for r in failed] == [name]  # type: ignore[attr-defined]


def test_an_updater_that_raises_is_run_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(update.Updater, "_update_slot", failing_once(update.Updater._update_slot))

    async def main() -> None:
        async with Sim() as sim:
            sid = await sim.create(replicas=2)
            await sim.advance(SETTLE_S)
            await sim.update(sid, env=["V=2"])
            await sim.advance(SETTLE_S * 2 + 5)
            stats = sim.manager.updates.statistics()
            assert (stats["failures"], stats["rounds"]) == (1, 1)
            assert sim.status(sid) == update.COMPLETED
            version = sim.spec_version(sid)
            runnable = [t for t in sim.tasks(sid) if t.desired <= TaskState.RUNNING]
            assert sorted(sim.version_of(t) for t in runnable) == [version, version]

    asyncio.run(main())
