"""shoal's exceptions. The hierarchy of everything that reaches a client:

    ShoalError
    ├── NotFound                 an object named by the client does not exist    (404)
    ├── InvalidArgument          the request is malformed or breaks a rule       (400)
    │   └── CSRError             a certificate signing request shoal cannot sign (400)
    ├── Conflict                 a name is taken                                 (409)
    ├── OutOfSequence            an update carried a stale Version.Index         (500, as dockerd)
    ├── FailedPrecondition       the object is in use / wrong state              (400)
    ├── NodeNotInSwarm           this node is not part of a swarm                (503)
    ├── NotManager               this node is not a swarm manager                (503)
    ├── AlreadyInSwarm           this node is already part of a swarm            (503)
    ├── LeaveRefused             a manager may not leave without --force        (503)
    ├── SwarmLocked              the manager's keys wait for the unlock key     (503)
    ├── NoLeader                 no manager holds the leadership (etcd)          (503)
    │   └── LostLeadership       a write fenced off: this manager was deposed    (503)
    ├── Unauthenticated          no certificate of this cluster was presented    (401)
    ├── PermissionDenied         the certificate may not do this (role, removed) (403)
    ├── ResourceExhausted        too many requests of this kind, try later       (429)
    ├── BodyTooLarge             a request body beyond the API's limit           (413)
    └── Internal                 anything else the server could not do           (500)
        ├── ConstraintRejected   a placement constraint that does not parse      (500, as dockerd)
        ├── ListenFailed         the cluster port could not be bound             (500)
        └── JoinFailed           no manager answered, or it refused the join     (500)

`http_error()` is the one mapping from an exception (these, aiohttp's own HTTP
errors, anything else) to the status and message a client is told: the Docker API
(api/server.py) and the cluster port (manager/clusterport/server.py) both answer
with it, as `{"message": ...}`. An exception outside this tree is a bug: the client
gets a 500 with a reference, the daemon's log gets the traceback. Messages are written as dockerd words them,
including the gRPC-flavoured prefixes the docker CLI shows verbatim.

Exceptions that stay inside one component and never reach a client are not part of
the tree; each is mapped where it leaves its component: `ExecutorError` and
`EngineError` (agent: into the task's status), `ConstraintError` (scheduler: into
ConstraintRejected or a task that fits no node), `TokenError` and `RootMismatch`
(pki: into JoinFailed or InvalidArgument), `SessionClosed` (agent session: a retry),
`WatcherClosed` (store: a resync), `DiskFull` (store backend: its writes taken back, their
writers told Internal), `EtcdError` (etcd member and client: a retry, or the store
stops), `APIError` (the `shoal` command's client).
"""

from __future__ import annotations

import secrets

from aiohttp import web

from shoal.log import get_logger

log = get_logger("shoal.errors")


class ShoalError(Exception):
    """Base class; `status` is the HTTP status the API answers with."""

    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(ShoalError):
    status = 404


class InvalidArgument(ShoalError):
    status = 400


class CSRError(InvalidArgument):
    """A node's certificate signing request is malformed or asks for what it may not."""


class Conflict(ShoalError):
    status = 409


class OutOfSequence(ShoalError):
    status = 500

    def __init__(
        self, message: str = "rpc error: code = Unknown desc = update out of sequence"
    ) -> None:
        super().__init__(message)


class FailedPrecondition(ShoalError):
    status = 400


class NodeNotInSwarm(ShoalError):
    status = 503

    def __init__(
        self,
        message: str = "This node is not part of a swarm",
    ) -> None:
        super().__init__(message)


class NotManager(ShoalError):
    status = 503

    def __init__(
        self,
        message: str = (
            'This node is not a swarm manager. Use "docker swarm init" or '
            '"docker swarm join" to connect this node to swarm and try again.'
        ),
    ) -> None:
        super().__init__(message)


WORKER_NOT_MANAGER = (
    "This node is not a swarm manager. Worker nodes can't be used to view or modify "
    "cluster state. Please run this command on a manager node or promote the current node "
    "to a manager."
)


class AlreadyInSwarm(ShoalError):
    status = 503

    def __init__(
        self,
        message: str = (
            'This node is already part of a swarm. Use "docker swarm leave" to leave '
            "this swarm and join another one."
        ),
    ) -> None:
        super().__init__(message)


class LeaveRefused(ShoalError):
    status = 503


class SwarmLocked(ShoalError):
    status = 503

    def __init__(
        self,
        message: str = (
            "Swarm is encrypted and needs to be unlocked before it can be used. "
            'Please use "docker swarm unlock" to unlock it.'
        ),
    ) -> None:
        super().__init__(message)


MSG_NO_LEADER = (
    "rpc error: code = Unknown desc = The swarm does not have a leader. It's possible that "
    "too few managers are online. Make sure more than half of the managers are online."
)


class NoLeader(ShoalError):
    """No manager holds the leadership (quorum lost, or an election under way): writes
    are refused with dockerd's words."""

    status = 503

    def __init__(self, message: str = MSG_NO_LEADER) -> None:
        super().__init__(message)


class LostLeadership(NoLeader):
    """A commit fenced off: the etcd transaction's compare on the leadership key (or
    on the store's index key) failed, so it wrote nothing. This manager was deposed (or
    its replica is behind what the leader wrote); its writers are told so and the
    store takes the transactions back, as for a full disk."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"rpc error: code = Unknown desc = lost leadership: {detail}")


class Unauthenticated(ShoalError):
    status = 401


class PermissionDenied(ShoalError):
    status = 403


class ResourceExhausted(ShoalError):
    status = 429


class BodyTooLarge(ShoalError):
    status = 413

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"request body is too large: {size} bytes or more, the limit is {limit} bytes"
        )


class Internal(ShoalError):
    status = 500


class ConstraintRejected(Internal):
    """dockerd answers a malformed constraint with 500 and gRPC code Unknown."""


class ListenFailed(Internal):
    pass


class JoinFailed(Internal):
    pass


def http_error(exc: BaseException, **context: object) -> tuple[int, str]:
    """The HTTP status and message a client is told of `exc`. Call it in the `except`
    block: for an exception outside ShoalError (a bug) it logs the traceback with
    `context` and tells the client only a reference to that log entry, since the
    exception's text may name paths, keys or state."""
    if isinstance(exc, ShoalError):
        return exc.status, exc.message
    if isinstance(exc, web.HTTPNotFound):
        return 404, "page not found"  # no such route: dockerd's words
    if isinstance(exc, web.HTTPMethodNotAllowed):
        return 405, "method not allowed"
    if isinstance(exc, web.HTTPException):  # raised by aiohttp itself (a bad upgrade...)
        return exc.status, exc.text or exc.reason
    ref = secrets.token_hex(4)
    log.exception("request failed", ref=ref, **context)
    return 500, f"internal error (reference {ref} in the daemon's log)"


def invalid_argument(desc: str) -> InvalidArgument:
    """An InvalidArgument worded as SwarmKit's control API words it."""
    return InvalidArgument(f"rpc error: code = InvalidArgument desc = {desc}")
