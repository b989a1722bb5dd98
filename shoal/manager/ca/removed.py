"""Removed nodes, as SwarmKit keeps them (`Cluster.BlacklistedCertificates`).

A certificate outlives `docker node rm`: it is valid until it expires. The cluster
port checks the store on every request and session message (access.py), and beside
that the IDs of removed nodes are kept with the cluster (`ClusterMeta.removed_nodes`)
until the last certificate such a node could hold has expired, so a removed node's
certificate is refused at the TLS handshake, before any path is read: no code path
that holds only the certificate can take it for a member's.

A node's certificates were all signed before its removal, each valid for at most the
cluster's `NodeCertExpiry` when it was signed; the entry is kept for the longer of the
current setting and SwarmKit's 90-day default from the removal (an expiry raised and
then lowered again could outlast it; the store check still refuses such a node).
"""

from __future__ import annotations

import msgspec

from shoal.manager.ca.signer import node_cert_expiry
from shoal.manager.store import ReadTx, Tx
from shoal.types.swarm import DEFAULT_NODE_CERT_EXPIRY_NS


def remove_node(tx: Tx, node_id: str, now_ns: int) -> None:
    """Delete the node and record its ID as removed; entries whose certificates have
    all expired by `now_ns` are dropped on the way."""
    tx.delete("node", node_id)
    cluster = tx.cluster()
    if cluster is None:
        return
    cfg = cluster.spec.ca_config
    expiry_ns = int(node_cert_expiry(cfg.node_cert_expiry if cfg else None).total_seconds() * 1e9)
    until = now_ns + max(expiry_ns, DEFAULT_NODE_CERT_EXPIRY_NS)
    meta = tx.cluster_meta()
    removed = {k: v for k, v in meta.removed_nodes.items() if v > now_ns}
    removed[node_id] = until
    tx.update(cluster, msgspec.structs.replace(meta, removed_nodes=removed))


def is_removed(view: ReadTx, node_id: str) -> bool:
    return node_id in view.cluster_meta().removed_nodes
