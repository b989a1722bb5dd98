"""Messages on an agent's session with a manager, over the cluster port (mutual TLS,
one websocket per session, MessagePack frames). A tagged union: `Type` names each.

Limits hold at decoding: a frame the manager receives is at most MAX_AGENT_FRAME_BYTES,
a Status carries at most MAX_STATUS_UPDATES updates, and a task state outside the
state machine's names does not decode."""

from __future__ import annotations

from typing import Annotated

import msgspec

from shoal.types.agent import Assignment, LogMessage, LogOptions, TaskStatusUpdate
from shoal.types.base import Model
from shoal.types.node import NodeDescription, TLSInfo

# What a manager reads from one agent frame (the websocket refuses larger ones).
MAX_AGENT_FRAME_BYTES = 4 * 1024 * 1024
# What an agent reads from its manager: a complete assignment may list many tasks.
MAX_MANAGER_FRAME_BYTES = 64 * 1024 * 1024
MAX_STATUS_UPDATES = 1000
# Log batches a subscription may have in flight before the agent waits for LogAck.
LOG_WINDOW = 4


class Register(Model, tag="register", kw_only=True):
    node_id: str = msgspec.field(name="NodeID")
    description: NodeDescription
    addr: str
    # a manager's own cluster port (several managers: what agents learn to dial)
    manager_addr: str | None = None


class Registered(Model, tag="registered", kw_only=True):
    period: float
    # the cluster ports of every manager, for the agent to fail over to
    managers: list[str] = msgspec.field(default_factory=list)


class Heartbeat(Model, tag="heartbeat", kw_only=True):
    seq: int


class HeartbeatAck(Model, tag="heartbeat_ack", kw_only=True):
    seq: int
    period: float
    # the managers' cluster ports when they changed since the session last said
    managers: list[str] = msgspec.field(default_factory=list)


class Status(Model, tag="status", kw_only=True):
    updates: Annotated[list[TaskStatusUpdate], msgspec.Meta(max_length=MAX_STATUS_UPDATES)]
    # the highest Assignment.network_seq the node has applied (0: no news)
    applied: int = 0


class AssignmentMsg(Model, tag="assignment", kw_only=True):
    assignment: Assignment


class LogSubscribe(Model, tag="logs_subscribe", kw_only=True):
    sub_id: str = msgspec.field(name="SubID")
    task_id: str = msgspec.field(name="TaskID")
    options: LogOptions


class LogAck(Model, tag="logs_ack", kw_only=True):
    """The manager's reader took one batch: the agent may send one more."""

    sub_id: str = msgspec.field(name="SubID")


class LogCancel(Model, tag="logs_cancel", kw_only=True):
    sub_id: str = msgspec.field(name="SubID")


class LogData(Model, tag="logs", kw_only=True):
    sub_id: str = msgspec.field(name="SubID")
    messages: list[LogMessage] = []
    done: bool = False


class TrustUpdate(Model, tag="trust", kw_only=True):
    """The manager tells a node what to trust (a PEM bundle: both roots during a root
    rotation) and whether to renew its certificate (its issuer is not the cluster's)."""

    trust_root: str
    renew: bool = False


class NodeTLS(Model, tag="node_tls", kw_only=True):
    """A node's TLS state as it is now (Docker's `Node.Description.TLSInfo`): sent
    after registering and after every change of its root or certificate."""

    tls_info: TLSInfo = msgspec.field(name="TLSInfo")


class SessionError(Model, tag="error", kw_only=True):
    message: str


SessionMessage = (
    Register
    | Registered
    | Heartbeat
    | HeartbeatAck
    | Status
    | AssignmentMsg
    | LogSubscribe
    | LogAck
    | LogCancel
    | LogData
    | TrustUpdate
    | NodeTLS
    | SessionError
)

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(SessionMessage)


def encode(msg: SessionMessage) -> bytes:
    return _encoder.encode(msg)


def decode(data: bytes) -> SessionMessage:
    """msgspec.ValidationError or msgspec.DecodeError for a frame that breaks the
    protocol (unknown type, a bad state, too many updates)."""
    return _decoder.decode(data)


class JoinRequest(Model, kw_only=True):
    """`POST /ca/join` on the cluster port: a node without a certificate asks for one."""

    token: str
    csr: str = msgspec.field(name="CSR")
    hostname: str
    addr: str
    availability: str | None = None


class JoinResponse(Model, kw_only=True):
    node_id: str = msgspec.field(name="NodeID")
    certificate: str
    role: str
    cluster_id: str = msgspec.field(name="ClusterID")
    managers: list[str]


class RenewRequest(Model, kw_only=True):
    csr: str = msgspec.field(name="CSR")


class RenewResponse(Model, kw_only=True):
    certificate: str
