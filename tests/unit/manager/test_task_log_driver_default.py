"""SwarmSpec.TaskDefaults.LogDriver: a task made for a service without a log driver
keeps the cluster's default of that moment (SwarmKit's NewTask), beside the task."""

from __future__ import annotations

import msgspec

from shoal.manager.orchestrator.task import create_task
from shoal.manager.store import MemoryBackend, Store, Tx
from shoal.types.service import TaskSpec
from shoal.types.swarm import SwarmSpec

from ..storeutil import commit
from .test_store import make_cluster, make_service

GELF = {"Name": "gelf", "Options": {"gelf-address": "udp://127.0.0.1:12201"}}


def test_tasks_keep_the_cluster_default_unless_their_service_names_a_driver() -> None:
    store = Store(MemoryBackend())
    cluster = msgspec.structs.replace(
        make_cluster(), spec=SwarmSpec(task_defaults={"LogDriver": GELF})
    )
    plain = make_service("s1", "plain")
    plain = msgspec.structs.replace(
        plain, spec=msgspec.structs.replace(plain.spec, task_template=TaskSpec())
    )
    own = make_service("s2", "own")
    own = msgspec.structs.replace(
        own,
        spec=msgspec.structs.replace(own.spec, task_template=TaskSpec(log_driver={"Name": "none"})),
    )

    def write(tx: Tx) -> tuple[str, str]:
        tx.create(cluster)
        tx.create(plain)
        tx.create(own)
        return create_task(tx, plain, 1).id, create_task(tx, own, 1).id

    try:
        a, b = commit(store, write)
        view = store.view()
        assert view.task_meta(a).default_log_driver == GELF
        assert view.task_meta(b).default_log_driver is None
        # Docker's task shows its service's template, untouched.
        task_a = view.get_task(a)
        assert task_a is not None and task_a.spec.log_driver is None
    finally:
        store.close()
