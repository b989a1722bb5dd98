"""Nodes: NodeSpec (operator intent) and what the node reports about itself."""

from __future__ import annotations

import msgspec

from shoal.types.base import Int64, Model, Version
from shoal.types.service import Platform

# A node's state from its join (it holds a certificate) until its agent's first session.
NODE_JOINED = "unknown"


class NodeSpec(Model, kw_only=True):
    name: str | None = None
    labels: dict[str, str] | None = None
    role: str
    availability: str


class NodeResources(Model):
    nano_cpus: Int64 = msgspec.field(default=0, name="NanoCPUs")
    memory_bytes: Int64 = 0


class EnginePlugin(Model):
    type: str = ""
    name: str = ""


class EngineDescription(Model):
    engine_version: str = ""
    labels: dict[str, str] | None = None
    plugins: list[EnginePlugin] | None = None


class TLSInfo(Model):
    trust_root: str = ""
    cert_issuer_subject: str = ""
    cert_issuer_public_key: str = ""


class NodeDescription(Model):
    hostname: str = ""
    platform: Platform = Platform()
    resources: NodeResources = NodeResources()
    engine: EngineDescription = EngineDescription()
    tls_info: TLSInfo | None = msgspec.field(default=None, name="TLSInfo")


class NodeStatus(Model, kw_only=True):
    state: str
    message: str | None = None
    addr: str = ""


class ManagerStatus(Model, kw_only=True):
    leader: bool = False
    reachability: str
    addr: str = ""


class Node(Model, kw_only=True):
    id: str = msgspec.field(name="ID")
    version: Version = Version()
    created_at: str = ""
    updated_at: str = ""
    spec: NodeSpec
    description: NodeDescription = NodeDescription()
    status: NodeStatus
    manager_status: ManagerStatus | None = None
