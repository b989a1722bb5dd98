"""Where a task's cgroups go and what limits they get (shoal/agent/executor/cgroups.py):
parsing /proc/self/mountinfo and /proc/self/cgroup, and the files a plan writes. The
real hierarchies are exercised by tests/integration/test_process_limits.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from shoal.agent.executor import cgroups
from shoal.agent.executor.cgroups import Layout

# This machine's shape: v1 controllers each mounted alone, a unified hierarchy beside.
HYBRID_MOUNTINFO = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
HYBRID_CGROUP = """\
9:name=systemd:/
8:pids:/
4:memory:/process_api/abc
2:cpuacct:/
1:cpu:/
0::/
"""
# cpu and cpuacct mounted together, as most distributions do; mounted at a subtree.
COMOUNTED_MOUNTINFO = """\
32 31 0:29 /outer /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
"""
COMOUNTED_CGROUP = """\
3:cpu,cpuacct:/outer/daemon
2:memory:/daemon
"""
V2_MOUNTINFO = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
V2_CGROUP = "0::/system.slice/shoal.service\n"


def test_v1_layout_is_the_daemons_own_cgroup_in_each_hierarchy() -> None:
    layout = cgroups.discover(HYBRID_MOUNTINFO, HYBRID_CGROUP)
    assert layout == Layout(
        1,
        {
            "memory": "/sys/fs/cgroup/memory/process_api/abc",
            "cpu": "/sys/fs/cgroup/cpu",
            "cpuacct": "/sys/fs/cgroup/cpuacct",
            "pids": "/sys/fs/cgroup/pids",
        },
        ("memory", "cpu", "cpuacct", "pids"),
    )


def test_comounted_controllers_share_one_directory() -> None:
    layout = cgroups.discover(COMOUNTED_MOUNTINFO, COMOUNTED_CGROUP)
    assert layout is not None
    assert layout.dirs == {
        "memory": "/sys/fs/cgroup/memory/daemon",
        "cpu": "/sys/fs/cgroup/cpu,cpuacct/daemon",
        "cpuacct": "/sys/fs/cgroup/cpu,cpuacct/daemon",
    }
    record = cgroups.plan(layout, "t1", nano_cpus=500_000_000, pids=10)
    assert record["dirs"] == [
        {"dir": "/sys/fs/cgroup/memory/daemon/shoal/t1", "files": {}},
        {
            "dir": "/sys/fs/cgroup/cpu,cpuacct/daemon/shoal/t1",
            "files": {"cpu.cfs_period_us": "100000", "cpu.cfs_quota_us": "50000"},
        },
    ]
    # No pids hierarchy: the limit is discarded, as dockerd does, and said so.
    assert record["missing"] == ["pids"]


def test_v2_layout_and_plan() -> None:
    layout = cgroups.discover(V2_MOUNTINFO, V2_CGROUP, "cpuset cpu io memory pids")
    assert layout == Layout(
        2, {"": "/sys/fs/cgroup/system.slice/shoal.service"}, ("memory", "cpu", "pids")
    )
    record = cgroups.plan(layout, "t1", 64 * 2**20, 1_500_000_000, 100)
    own = "/sys/fs/cgroup/system.slice/shoal.service"
    assert record["enable"] == [own, own + "/shoal"]
    assert record["dirs"] == [
        {
            "dir": own + "/shoal/t1",
            "files": {
                "memory.max": "67108864",
                "memory.swap.max": "67108864",
                "cpu.max": "150000 100000",
                "pids.max": "100",
            },
        }
    ]
    assert record["missing"] == []


def test_v2_without_controllers_still_gives_each_task_a_cgroup() -> None:
    layout = cgroups.discover(V2_MOUNTINFO, V2_CGROUP, "")
    assert layout is not None and layout.controllers == ()
    record = cgroups.plan(layout, "t1", memory_bytes=2**20)
    assert record["missing"] == ["memory"]
    assert record["dirs"][0]["files"] == {}


def test_no_cgroup_mount_is_no_layout() -> None:
    mountinfo = "22 1 0:21 / /proc rw - proc proc rw\n"
    assert cgroups.discover(mountinfo, "0::/\n") is None


def test_limit_files_as_dockerd_sets_them() -> None:
    files = cgroups.limit_files(1, 32 * 2**20, 200_000_000, 20)
    assert files == {
        # dockerd's default MemorySwap is twice the memory limit.
        "memory": {
            "memory.limit_in_bytes": "33554432",
            "memory.memsw.limit_in_bytes": "67108864",
        },
        "cpu": {"cpu.cfs_period_us": "100000", "cpu.cfs_quota_us": "20000"},
        "pids": {"pids.max": "20"},
    }
    # The kernel's smallest quota, for a tiny NanoCPUs.
    assert cgroups.limit_files(1, None, 1000, None)["cpu"]["cpu.cfs_quota_us"] == "1000"
    assert cgroups.limit_files(1, 0, 0, 0) == {}


def test_oom_kills_read_from_the_records_directories(tmp_path: Path) -> None:
    v1, v2 = tmp_path / "v1", tmp_path / "v2"
    v1.mkdir()
    v2.mkdir()
    (v1 / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")
    (v2 / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    record = {"dirs": [{"dir": str(v1), "files": {}}, {"dir": str(v2), "files": {}}]}
    assert cgroups.oom_kills(record) == 3
    assert cgroups.oom_kills(None) == 0


def test_kill_and_remove_removes_the_recorded_directories_and_an_empty_parent(
    tmp_path: Path,
) -> None:
    parent = tmp_path / "shoal"
    task = parent / "t1"
    task.mkdir(parents=True)
    other = tmp_path / "other"
    other.mkdir()
    record = {"dirs": [{"dir": str(task), "files": {}}]}
    assert cgroups.kill_and_remove(record)
    assert not parent.exists() and other.exists()
    assert cgroups.kill_and_remove(record)  # nothing left: nothing to do


def test_protect_daemon_makes_the_process_non_dumpable() -> None:
    code = (
        "import ctypes\n"
        "from shoal.agent.executor.process import protect_daemon\n"
        "protect_daemon()\n"
        "print(ctypes.CDLL(None).prctl(3, 0, 0, 0, 0))\n"  # PR_GET_DUMPABLE
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0"
