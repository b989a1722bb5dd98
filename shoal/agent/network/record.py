"""The plumbing's record of every kernel object it creates: written (atomically)
before the object is created and trimmed after it is removed, so that a daemon started
after a `kill -9` finds exactly what its predecessor may have left, never by matching
names. One JSON file in the daemon's data directory:

    {"netns_dir": "<run dir>/netns" | null,     the shared bind mount of that dir, if ours
     "networks": {<network id>: {"netns": <sandbox namespace file>, "vni": N, "ino": N,
                  "ready": false until its bridge and VXLAN device are both made}},
     "tasks":    {<task id>: {"netns": <namespace file> , "own_netns": true|false,
                  "links": {<network id>: <veth name in the network's sandbox>},
                  "nft": ["ip shoal-vip"]}},
     "mesh":     null | {"network": <ingress network id>, "netns": <gateway namespace>,
                  "node_veth": <its veth in the node namespace>, "table": <the node
                  namespace's nftables table, "ip shoal-mesh-<random>">,
                  },
     "hostports": null | {"table": <the node namespace's table for host-mode ports>},
     "forwarding": null | <the node namespace's ip_forward before shoal turned it on>}
    (a task's entry has "hostport": {"veth", "index", "ports"} for its host-mode link)
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import msgspec

RECORD_FILE = "network-record.json"


class Record:
    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / RECORD_FILE
        self._lock = threading.Lock()
        self.netns_dir: str | None = None
        self.networks: dict[str, dict[str, Any]] = {}
        self.tasks: dict[str, dict[str, Any]] = {}
        self.mesh: dict[str, Any] | None = None
        self.hostports: dict[str, Any] | None = None
        self.forwarding: str | None = None
        self._load()

    def _load(self) -> None:
        try:
            data = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return
        except ValueError:
            data = {}  # torn by a crash before the rename: never happens with replace
        self.netns_dir = data.get("netns_dir")
        self.networks = dict(data.get("networks") or {})
        self.tasks = dict(data.get("tasks") or {})
        self.mesh = data.get("mesh")
        self.hostports = data.get("hostports")
        self.forwarding = data.get("forwarding")

    def save(self) -> None:
        """Write the record as it is now (callers mutate under `locked`)."""
        data = {
            "netns_dir": self.netns_dir,
            "networks": self.networks,
            "tasks": self.tasks,
            "mesh": self.mesh,
            "hostports": self.hostports,
            "forwarding": self.forwarding,
        }
        tmp = self.path.with_suffix(".tmp")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        # No fsync: what the record describes (namespaces, devices) does not survive a
        # reboot either, and a crashed daemon's writes are in the page cache. The rename
        # makes it whole or absent. (fsync cost 20 ms a task start on this VM's disk.)
        try:
            # msgspec: the record grows with the node's tasks and is written twice a
            # task start; json.dumps cost ten times as much.
            os.write(fd, msgspec.json.encode(data, order="sorted"))
        finally:
            os.close(fd)
        os.replace(tmp, self.path)

    @property
    def locked(self) -> threading.Lock:
        return self._lock

    def empty(self) -> bool:
        return not (
            self.netns_dir
            or self.networks
            or self.tasks
            or self.mesh
            or self.hostports
            or self.forwarding is not None
        )

    def discard_file(self) -> None:
        """Remove the record once nothing is left in it."""
        with self._lock:
            if self.empty():
                try:
                    self.path.unlink()
                except FileNotFoundError:
                    pass
