"""A networked task's own /etc/hosts, /etc/resolv.conf and hostname, as dockerd writes
them for a container on a swarm network. The files live in the task's directory (under
the daemon's data dir, never on the host's /etc) and are bind-mounted over /etc/hosts
and /etc/resolv.conf in the task's private mount namespace (shim.py `enter_mounts`).
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from shoal.types.network import NetworkAttachment

HOSTS_FILE = "hosts"
RESOLV_FILE = "resolv.conf"
HOST_RESOLV_CONF = Path("/etc/resolv.conf")
# Docker's embedded DNS server, served in every task's namespace (the DNS resolver).
EMBEDDED_DNS = "127.0.0.11"
# What Docker's default hostname is made of: the first 12 characters of the ID.
HOSTNAME_LEN = 12

_HOSTS_HEADER = """127.0.0.1\tlocalhost
::1\tlocalhost ip6-localhost ip6-loopback
fe00::0\tip6-localnet
ff00::0\tip6-mcastprefix
ff02::1\tip6-allnodes
ff02::2\tip6-allrouters
"""


def default_hostname(task_id: str) -> str:
    """A task's hostname when its spec names none: Docker uses the container ID's first
    12 characters; a process task has no container, so its task ID's."""
    return task_id[:HOSTNAME_LEN]


def hosts(hostname: str, attachments: list[NetworkAttachment]) -> str:
    """localhost, then the task's hostname on its address on each network (dockerd
    writes the first; every one is harmless and helps multi-homed tasks)."""
    lines = [_HOSTS_HEADER]
    for att in attachments:
        for addr in att.addresses or []:
            lines.append(f"{ipaddress.ip_interface(addr).ip}\t{hostname}\n")
    return "".join(lines)


def resolv_conf(host_conf: str) -> str:
    """The embedded DNS server, with the node's search domains and options, plus
    `ndots:0` as dockerd adds for it."""
    search: list[str] = []
    options: list[str] = []
    for line in host_conf.splitlines():
        words = line.split()
        if not words or words[0].startswith(("#", ";")):
            continue
        if words[0] in ("search", "domain"):
            search = words[1:]
        elif words[0] == "options":
            options += [o for o in words[1:] if not o.startswith("ndots:")]
    out = [f"nameserver {EMBEDDED_DNS}\n"]
    if search:
        out.append("search " + " ".join(search) + "\n")
    out.append("options " + " ".join(["ndots:0", *options]) + "\n")
    return "".join(out)


def write(
    task_dir: Path, hostname: str, attachments: list[NetworkAttachment]
) -> list[dict[str, str]]:
    """Write the task's files; returns the bind mounts its shim makes of them."""
    try:
        host_conf = HOST_RESOLV_CONF.read_text()
    except OSError:
        host_conf = ""
    (task_dir / HOSTS_FILE).write_text(hosts(hostname, attachments))
    (task_dir / RESOLV_FILE).write_text(resolv_conf(host_conf))
    for name in (HOSTS_FILE, RESOLV_FILE):
        (task_dir / name).chmod(0o644)
    return [
        {"bind": str(task_dir / HOSTS_FILE), "target": "/etc/hosts"},
        {"bind": str(task_dir / RESOLV_FILE), "target": "/etc/resolv.conf"},
    ]
