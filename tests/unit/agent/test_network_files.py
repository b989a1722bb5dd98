"""The pure parts of the node's network plumbing: derived MACs, names, a task's
/etc/hosts and /etc/resolv.conf, and the record's round trip."""

from __future__ import annotations

from pathlib import Path

from shoal.agent.network import taskfiles
from shoal.agent.network.devices import mac_of
from shoal.agent.network.plumbing import sandbox_name, task_ns_name, veth_name
from shoal.agent.network.record import Record
from shoal.types.network import Network, NetworkAttachment


def test_mac_is_02_42_and_the_address_bytes() -> None:
    assert mac_of("10.0.1.3") == "02:42:0a:00:01:03"
    assert mac_of("10.200.255.254") == "02:42:0a:c8:ff:fe"


def test_names_fit_an_interface_name() -> None:
    task_id = "6pmml8f6k1rkd7hk42r4taobo"
    assert veth_name(task_id) == "vt6pmml8f6k1rk" and len(veth_name(task_id)) <= 15
    assert sandbox_name("5ly89ldiq6psor0rr7xetw7gj") == "net-5ly89ldiq6ps"
    assert task_ns_name(task_id) == f"task-{task_id}"


def test_hosts_names_the_task_on_each_of_its_addresses() -> None:
    atts = [
        NetworkAttachment(network=Network(id="n1"), addresses=["10.0.1.3/24"]),
        NetworkAttachment(network=Network(id="n2"), addresses=["10.0.2.7/24"]),
    ]
    hosts = taskfiles.hosts("web-1", atts)
    assert hosts.startswith("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
    assert hosts.endswith("10.0.1.3\tweb-1\n10.0.2.7\tweb-1\n")


def test_resolv_conf_keeps_the_nodes_search_and_options_with_ndots_0() -> None:
    host = (
        "# generated\nnameserver 10.1.1.1\nnameserver 10.1.1.2\nsearch corp.example lab\n"
        "options ndots:3 timeout:2 rotate\n"
    )
    assert taskfiles.resolv_conf(host) == (
        "nameserver 127.0.0.11\nsearch corp.example lab\noptions ndots:0 timeout:2 rotate\n"
    )
    assert taskfiles.resolv_conf("") == "nameserver 127.0.0.11\noptions ndots:0\n"


def test_default_hostname_is_the_first_12_of_the_task_id() -> None:
    assert taskfiles.default_hostname("6pmml8f6k1rkd7hk42r4taobo") == "6pmml8f6k1rk"


def test_write_gives_the_shim_two_bind_mounts(tmp_path: Path) -> None:
    att = [NetworkAttachment(network=Network(id="n1"), addresses=["10.0.1.3/24"])]
    binds = taskfiles.write(tmp_path, "h", att)
    assert binds == [
        {"bind": str(tmp_path / "hosts"), "target": "/etc/hosts"},
        {"bind": str(tmp_path / "resolv.conf"), "target": "/etc/resolv.conf"},
    ]
    assert (tmp_path / "hosts").read_text().endswith("10.0.1.3\th\n")
    assert (tmp_path / "hosts").stat().st_mode & 0o777 == 0o644


def test_record_round_trip_and_discard(tmp_path: Path) -> None:
    record = Record(tmp_path)
    assert record.empty() and not record.path.exists()
    record.netns_dir = "/x/netns"
    record.networks["n1"] = {"netns": "/x/netns/net-n1", "vni": 4097, "ino": 5}
    record.tasks["t1"] = {"netns": "/x/netns/task-t1", "own_netns": True, "links": {"n1": "vtt1"}}
    record.save()
    again = Record(tmp_path)
    assert (again.netns_dir, again.networks, again.tasks) == (
        record.netns_dir, record.networks, record.tasks,
    )  # fmt: skip
    again.discard_file()
    assert again.path.exists()  # not empty: kept
    again.netns_dir = None
    again.networks.clear()
    again.tasks.clear()
    again.discard_file()
    assert not again.path.exists()
