"""shoal's exceptions. The hierarchy:

    ShoalError
    ├── NotFound                 an object named by the client does not exist    (404)
    ├── InvalidArgument          the request is malformed or breaks a rule       (400)
    ├── Conflict                 a name is taken                                 (409)
    ├── OutOfSequence            an update carried a stale Version.Index         (500, as dockerd)
    ├── FailedPrecondition       the object is in use / wrong state              (400)
    ├── NodeNotInSwarm           this node is not part of a swarm                (503)
    ├── NotManager               this node is not a swarm manager                (503)
    ├── AlreadyInSwarm           this node is already part of a swarm            (503)
    ├── Unauthenticated          no certificate of this cluster was presented    (401)
    ├── PermissionDenied         the certificate may not do this (role, removed) (403)
    ├── ResourceExhausted        too many requests of this kind, try later       (429)
    └── Internal                 anything else the server could not do           (500)

The API layer turns them into Docker's `{"message": ...}` bodies with these status
codes; nothing else leaks to clients. Messages are written as dockerd words them,
including the gRPC-flavoured prefixes the docker CLI shows verbatim.
"""

from __future__ import annotations


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


class Unauthenticated(ShoalError):
    status = 401


class PermissionDenied(ShoalError):
    status = 403


class ResourceExhausted(ShoalError):
    status = 429


class Internal(ShoalError):
    status = 500


def invalid_argument(desc: str) -> InvalidArgument:
    """An InvalidArgument worded as SwarmKit's control API words it."""
    return InvalidArgument(f"rpc error: code = InvalidArgument desc = {desc}")
