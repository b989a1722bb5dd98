"""What the manager decides alone on the cluster port: certificate names, key curves,
the one pinned root, the rate of joins, and whose status report counts."""

from __future__ import annotations

import asyncio
import datetime
import time

import msgspec
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from shoal.manager.ca.issuer import Issuer
from shoal.manager.ca.root import RootCA
from shoal.manager.ca.signer import CSRError, sign_node_certificate
from shoal.manager.clusterport.ratelimit import JoinLimiter
from shoal.manager.dispatcher.dispatcher import Dispatcher
from shoal.manager.store import MemoryBackend, Store, Tx
from shoal.pki import RootMismatch, ca_digest, pinned_root
from shoal.types import session as session_msg
from shoal.types.agent import TaskStatusUpdate
from shoal.types.node import Node, NodeDescription, NodeSpec, NodeStatus
from shoal.types.service import JoinTokens
from shoal.types.session import JoinRequest
from shoal.types.swarm import Cluster, SwarmSpec
from shoal.types.task import Task, TaskStatus

from ..storeutil import commit, run

DAY = datetime.timedelta(days=1)


@pytest.fixture(scope="module")
def root() -> RootCA:
    return RootCA.create()


def csr_on(curve: ec.EllipticCurve) -> bytes:
    key = ec.generate_private_key(curve)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def san_names(pem: bytes) -> tuple[list[str], list[object]]:
    cert = x509.load_pem_x509_certificate(pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return sorted(san.get_values_for_type(x509.DNSName)), san.get_values_for_type(x509.IPAddress)


# --------------------------------------------------------------------------- certificates


def test_a_join_request_cannot_add_names_to_its_certificate(root: RootCA) -> None:
    store = Store(MemoryBackend())
    tokens = JoinTokens(worker=root.new_join_token(), manager=root.new_join_token())

    def create(tx: Tx) -> None:
        tx.create(
            Cluster(
                id="cid", spec=SwarmSpec(), subnet_size=24, data_path_port=4789, join_tokens=tokens
            )
        )

    commit(store, create)
    req = JoinRequest(
        token=tokens.worker, csr=csr_on(ec.SECP256R1()).decode(), hostname="h", addr="swarm-manager"
    )
    resp = run(Issuer(store, root, []).join(req, "10.0.0.9"))
    dns, ips = san_names(resp.certificate.encode())
    assert dns == sorted(["swarm-worker", resp.node_id])
    assert ips == []
    node = store.view().get_node(resp.node_id)
    assert node is not None and node.status.addr == "10.0.0.9"


def test_manager_certificates_carry_the_managers_names(root: RootCA) -> None:
    pem = sign_node_certificate(root, csr_on(ec.SECP256R1()), "m1", "manager", "cid", DAY)
    assert san_names(pem) == (sorted(["swarm-manager", "m1", "swarm-ca"]), [])


@pytest.mark.parametrize("curve", [ec.SECP256R1(), ec.SECP384R1()])
def test_keys_on_p256_and_p384_are_signed(root: RootCA, curve: ec.EllipticCurve) -> None:
    sign_node_certificate(root, csr_on(curve), "n", "worker", "cid", DAY)


@pytest.mark.parametrize("curve", [ec.SECP192R1(), ec.SECP224R1(), ec.SECP521R1(), ec.SECP256K1()])
def test_keys_on_other_curves_are_refused(root: RootCA, curve: ec.EllipticCurve) -> None:
    with pytest.raises(CSRError, match=f"curve {curve.name} is not allowed"):
        sign_node_certificate(root, csr_on(curve), "n", "worker", "cid", DAY)


# --------------------------------------------------------------------------- the pinned root


def test_the_pinned_root_is_exactly_the_hashed_certificate(root: RootCA) -> None:
    digest = ca_digest(root.cert_pem)
    assert pinned_root(root.cert_pem, digest) == root.cert_pem
    other = RootCA.create()
    with pytest.raises(RootMismatch):
        pinned_root(other.cert_pem, digest)
    for bundle in (
        root.cert_pem + other.cert_pem,
        other.cert_pem + root.cert_pem,
        root.cert_pem + b"\x00",
        b"junk\n" + root.cert_pem,
        b"",
    ):
        with pytest.raises(ValueError):
            pinned_root(bundle, digest)


# --------------------------------------------------------------------------- join rate


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_joins_from_one_peer_are_rate_limited() -> None:
    t = FakeTime()
    limiter = JoinLimiter(now=t)
    allowed = sum(limiter.allow("10.0.0.1") for _ in range(100))
    assert allowed == 20  # the burst per peer
    assert limiter.allow("10.0.0.2")  # another peer has its own bucket
    assert not limiter.allow("10.0.0.1")
    t.now += 1.0  # 5 joins a second come back
    assert sum(limiter.allow("10.0.0.1") for _ in range(10)) == 5
    assert limiter.refused == 80 + 1 + 5


def test_joins_from_everyone_are_rate_limited() -> None:
    t = FakeTime()
    limiter = JoinLimiter(now=t)
    allowed = sum(limiter.allow(f"10.0.{i // 256}.{i % 256}") for i in range(1000))
    assert allowed == 200  # the common burst
    t.now += 1.0
    assert sum(limiter.allow(f"10.1.0.{i}") for i in range(100)) == 50


# --------------------------------------------------------------------------- reports


def _node(node_id: str) -> Node:
    return Node(
        id=node_id,
        spec=NodeSpec(role="worker", availability="active"),
        status=NodeStatus(state="unknown"),
    )


def _status(state: str) -> TaskStatus:
    return TaskStatus(timestamp="2026-01-01T00:00:00.000000000Z", state=state, message=state)  # type: ignore[arg-type]


def test_a_node_cannot_overwrite_another_nodes_pending_report() -> None:
    """Reports wait in a batch keyed by (node, task): node B's claim about node A's task
    neither counts nor replaces A's own report in the same batch."""
    store = Store(MemoryBackend())
    task = Task(id="t1", node_id="a", status=_status("assigned"), desired_state="running")

    def create(tx: Tx) -> None:
        tx.create(_node("a"))
        tx.create(_node("b"))
        tx.create(task)

    commit(store, create)

    class NoLogs:
        def task_logs(self, task_id: str, options: object) -> object:
            raise AssertionError("not asked")

    async def main() -> None:
        d = Dispatcher(store)
        run = asyncio.create_task(d.run())
        for node in ("a", "b"):
            await d.register(node, NodeDescription(), "127.0.0.1", NoLogs())  # type: ignore[arg-type]
        await d.update_task_status("a", [TaskStatusUpdate(task_id="t1", status=_status("running"))])
        await d.update_task_status("b", [TaskStatusUpdate(task_id="t1", status=_status("failed"))])
        d.stop()
        await run  # the last batch is written as the dispatcher stops

    asyncio.run(main())
    stored = store.view().get_task("t1")
    assert stored is not None and stored.status.state == "running"


def test_a_status_message_carries_at_most_1000_updates() -> None:
    update = TaskStatusUpdate(task_id="t", status=_status("running"))
    ok = session_msg.encode(session_msg.Status(updates=[update] * 1000))
    assert len(session_msg.decode(ok).updates) == 1000  # type: ignore[union-attr]
    too_many = session_msg.encode(session_msg.Status(updates=[update] * 1001))
    with pytest.raises(msgspec.ValidationError, match="length <= 1000"):
        session_msg.decode(too_many)


def test_a_state_outside_the_state_machine_does_not_decode() -> None:
    frame = msgspec.msgpack.encode(
        {
            "type": "status",
            "Updates": [{"TaskID": "t", "Status": {"Timestamp": "", "State": "x", "Message": ""}}],
        }
    )
    with pytest.raises(msgspec.ValidationError, match="Invalid enum value 'x'"):
        session_msg.decode(frame)


def test_nodes_that_joined_but_never_registered_are_forgotten() -> None:
    store = Store(MemoryBackend())

    def create(tx: Tx) -> None:
        tx.create(_node("joined-only"))
        tx.create(msgspec.structs.replace(_node("registered"), status=NodeStatus(state="ready")))
        tx.create(msgspec.structs.replace(_node("down"), status=NodeStatus(state="down")))

    commit(store, create)
    d = Dispatcher(store)
    joined_at = time.time_ns()
    run(d.forget_unregistered(joined_at + 299 * 10**9))  # within the 5 minutes: kept
    assert {n.id for n in store.view().nodes()} == {"joined-only", "registered", "down"}
    run(d.forget_unregistered(joined_at + 301 * 10**9))
    assert {n.id for n in store.view().nodes()} == {"registered", "down"}
