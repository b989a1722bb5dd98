"""`shoal daemon --datastore-endpoint`: the manager keeps its state in an external etcd
(real etcd, real mutual TLS, on loopback) instead of SQLite: a service created there is
in etcd, sealed, and found again by the daemon restarted after a stop or a kill -9
(once its old lease has expired); `swarm leave --force` removes the cluster's keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal.manager.etcd.datastore import cluster_prefix

from .etcd_harness import EtcdThread
from .harness import DaemonFactory, init_swarm

pytestmark = pytest.mark.integration

SLEEP = ("sleep", "1000")


def test_daemon_keeps_its_state_in_etcd(daemon_factory: DaemonFactory, tmp_path: Path) -> None:
    etcd = EtcdThread(tmp_path / "etcd")
    with etcd as cluster:
        daemon = daemon_factory(
            node_name="etcd-backed",
            args=cluster.datastore_args("daemon-client", tmp_path / "tls"),
        )
        init_swarm(daemon)
        daemon.create_service("kept", "--replicas", "1", "busybox", *SLEEP)
        daemon.wait_processes("kept", 1, argv=SLEEP)
        version = daemon.service("kept")["Version"]["Index"]
        cluster_id = daemon.docker("info", "--format", "{{.Swarm.Cluster.ID}}").stdout.strip()
        prefix = cluster_prefix(cluster_id)

        async def stored() -> dict[bytes, bytes]:
            client = cluster.client()
            try:
                return {kv.key: kv.value for kv in await client.get_prefix(prefix)}
            finally:
                await client.close()

        keys = etcd.run(stored())
        services = [k for k in keys if k.startswith(prefix + b"store/o/service/")]
        assert len(services) == 1, sorted(keys)
        assert b"kept" not in keys[services[0]]  # sealed with the manager's DEK
        assert prefix + b"election/leader" in keys
        assert not list(daemon.data_dir.rglob("store.db"))  # no SQLite beside it

        daemon.stop()
        daemon.start()
        assert daemon.service("kept")["Version"]["Index"] == version
        daemon.wait_processes("kept", 1, argv=SLEEP)

        # killed: its leadership stays in etcd until its lease expires, and the
        # restarted manager waits for it, then leads and finds everything
        daemon.kill9()
        assert prefix + b"election/leader" in etcd.run(stored())
        daemon.start()
        assert daemon.service("kept")["Version"]["Index"] == version
        daemon.create_service("added", "--replicas", "1", "busybox", *SLEEP)
        daemon.wait_processes("added", 1, argv=SLEEP)

        daemon.docker("swarm", "leave", "--force")
        assert etcd.run(stored()) == {}
