"""The cluster CA: node certificates, joining with tokens, renewal, TLS identities."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509

from shoal.agent.join import renewal_delay
from shoal.errors import InvalidArgument, PermissionDenied
from shoal.manager.ca.issuer import MSG_BAD_TOKEN, Issuer
from shoal.manager.ca.root import RootCA
from shoal.manager.ca.signer import (
    CSRError,
    node_cert_expiry,
    sign_node_certificate,
)
from shoal.manager.store import MemoryBackend, Store, Tx
from shoal.pki import (
    Identity,
    TokenError,
    ca_digest,
    identity_of,
    make_csr,
    new_key,
    parse_token,
)
from shoal.types.service import JoinTokens
from shoal.types.session import JoinRequest
from shoal.types.swarm import Cluster, SwarmSpec

from ..storeutil import commit, run

DAY = datetime.timedelta(days=1)
HOUR_NS = 3600 * 1_000_000_000
# The documented numbers (SwarmKit's), pinned here rather than read from the code: node
# certificates live 90 days by default, at least 1 hour, and are renewed at a random
# point between 50 % and 80 % of their life.
DEFAULT_EXPIRY = datetime.timedelta(days=90)
MIN_EXPIRY = datetime.timedelta(hours=1)
RENEW_FROM, RENEW_TO = 0.5, 0.8


@pytest.fixture(scope="module")
def root() -> RootCA:
    return RootCA.create()


def cluster_store(root: RootCA) -> tuple[Store, JoinTokens]:
    store = Store(MemoryBackend())
    tokens = JoinTokens(worker=root.new_join_token(), manager=root.new_join_token())

    def create(tx: Tx) -> None:
        tx.create(
            Cluster(
                id="cid",
                spec=SwarmSpec(),
                tls_info=root.tls_info(),
                subnet_size=24,
                data_path_port=4789,
                join_tokens=tokens,
            )
        )

    commit(store, create)
    return store, tokens


def test_join_token_carries_the_roots_digest(root: RootCA) -> None:
    token = parse_token(root.new_join_token())
    assert token.digest == ca_digest(root.cert_pem)
    assert len(token.digest) == 50 and len(token.secret) == 25


@pytest.mark.parametrize("bad", ["", "SWMTKN-1-abc-def", "SWMTKN-2-" + "a" * 50 + "-" + "b" * 25])
def test_malformed_tokens(bad: str) -> None:
    with pytest.raises(TokenError):
        parse_token(bad)


def test_node_certificate_names_node_role_and_cluster(root: RootCA) -> None:
    pem = sign_node_certificate(root, make_csr(new_key()), "node1", "worker", "cid", DAY)
    cert = x509.load_pem_x509_certificate(pem)
    assert identity_of(cert) == Identity(node_id="node1", role="worker", cluster_id="cid")
    assert cert.issuer == root.cert.subject
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == DAY + datetime.timedelta(hours=1)


def test_garbage_csr_is_refused(root: RootCA) -> None:
    with pytest.raises(CSRError):
        sign_node_certificate(root, b"not a csr", "n", "worker", "cid", DAY)


def test_expiry_below_the_minimum_falls_back_to_the_default() -> None:
    assert node_cert_expiry(None) == DEFAULT_EXPIRY
    assert node_cert_expiry(60 * 1_000_000_000) == DEFAULT_EXPIRY
    assert node_cert_expiry(HOUR_NS - 1) == DEFAULT_EXPIRY
    assert node_cert_expiry(HOUR_NS) == MIN_EXPIRY
    assert node_cert_expiry(48 * HOUR_NS) == datetime.timedelta(days=2)


@pytest.mark.parametrize("role", ["worker", "manager"])
def test_join_with_a_token_creates_the_node_with_its_role(root: RootCA, role: str) -> None:
    store, tokens = cluster_store(root)
    issuer = Issuer(store, root, ["127.0.0.1:2377"])
    token = tokens.worker if role == "worker" else tokens.manager
    resp = run(
        issuer.join(
            JoinRequest(
                token=token, csr=make_csr(new_key()).decode(), hostname="h2", addr="10.0.0.2"
            ),
            "10.0.0.2",
        )
    )
    assert resp.role == role and resp.cluster_id == "cid"
    assert resp.managers == ["127.0.0.1:2377"]
    node = store.view().get_node(resp.node_id)
    assert node is not None and node.spec.role == role
    assert node.description.hostname == "h2" and node.status.state == "unknown"
    ident = identity_of(x509.load_pem_x509_certificate(resp.certificate.encode()))
    assert ident == Identity(node_id=resp.node_id, role=role, cluster_id="cid")


def test_a_wrong_or_rotated_token_admits_nobody(root: RootCA) -> None:
    store, tokens = cluster_store(root)
    issuer = Issuer(store, root, [])
    before = store.index
    # The last character changed (to one it is not: "x" would leave a token ending in
    # "x" valid, one run in 36).
    altered = tokens.worker[:-1] + ("y" if tokens.worker.endswith("x") else "x")
    for token in (root.new_join_token(), altered):
        with pytest.raises(InvalidArgument) as err:
            run(
                issuer.join(
                    JoinRequest(
                        token=token, csr=make_csr(new_key()).decode(), hostname="h", addr="10.0.0.3"
                    ),
                    "10.0.0.3",
                )
            )
        assert err.value.message == MSG_BAD_TOKEN
    assert store.index == before and store.view().nodes() == []


def test_renewal_keeps_the_node_and_takes_its_current_role(root: RootCA) -> None:
    store, tokens = cluster_store(root)
    issuer = Issuer(store, root, [])
    joined = run(
        issuer.join(
            JoinRequest(
                token=tokens.worker, csr=make_csr(new_key()).decode(), hostname="h", addr="10.0.0.4"
            ),
            "10.0.0.4",
        )
    )
    ident = Identity(node_id=joined.node_id, role="worker", cluster_id="cid")

    def promote(tx: Tx) -> None:
        import msgspec

        node = tx.get_node(joined.node_id)
        assert node is not None
        tx.update(
            msgspec.structs.replace(node, spec=msgspec.structs.replace(node.spec, role="manager"))
        )

    commit(store, promote)
    renewed = issuer.renew(ident, make_csr(new_key()).decode())
    got = identity_of(x509.load_pem_x509_certificate(renewed.certificate.encode()))
    assert got == Identity(node_id=joined.node_id, role="manager", cluster_id="cid")


def test_renewal_refuses_strangers(root: RootCA) -> None:
    store, _ = cluster_store(root)
    issuer = Issuer(store, root, [])
    with pytest.raises(PermissionDenied):
        issuer.renew(Identity("ghost", "worker", "cid"), make_csr(new_key()).decode())


def test_renewal_falls_between_half_and_four_fifths_of_the_life(root: RootCA) -> None:
    pem = sign_node_certificate(root, make_csr(new_key()), "n", "worker", "cid", 10 * DAY)
    cert = x509.load_pem_x509_certificate(pem)
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    life = (end - start).total_seconds()
    for _ in range(50):
        delay = renewal_delay(pem, now=start)
        assert RENEW_FROM * life <= delay <= RENEW_TO * life
    assert renewal_delay(pem, now=end) == 0.0
