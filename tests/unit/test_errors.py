"""One exception tree (shoal/errors.py) and one mapping of it onto HTTP answers,
shared by the Docker API and the cluster port."""

from __future__ import annotations

import ast
import asyncio
import json
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

import shoal
from shoal import errors
from shoal.api.server import docker_middleware
from shoal.api.tasks import resolve_task
from shoal.errors import (
    AlreadyInSwarm,
    Conflict,
    ConstraintRejected,
    CSRError,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    JoinFailed,
    LeaveRefused,
    ListenFailed,
    NodeNotInSwarm,
    NotFound,
    NotManager,
    OutOfSequence,
    PermissionDenied,
    ResourceExhausted,
    ShoalError,
    Unauthenticated,
    http_error,
)
from shoal.manager.controlapi.nodes import resolve_node
from shoal.manager.controlapi.services import resolve_service
from shoal.manager.store import MemoryBackend, Store

PACKAGE_DIR = Path(shoal.__file__).parent


def test_every_shoal_error_is_defined_in_the_errors_module() -> None:
    """No module grows its own branch of the tree: a class deriving from one of the
    tree's classes is defined in shoal/errors.py."""
    tree = {name for name, obj in vars(errors).items() if isinstance(obj, type)}
    outside = []
    for path in PACKAGE_DIR.rglob("*.py"):
        if path.name == "errors.py" and path.parent == PACKAGE_DIR:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                bases = {
                    b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases
                }
                if bases & tree:
                    outside.append(f"{path.relative_to(PACKAGE_DIR)}: {node.name}")
    assert not outside


def test_the_docstring_draws_the_whole_tree() -> None:
    classes = {
        obj.__name__
        for obj in vars(errors).values()
        if isinstance(obj, type) and issubclass(obj, ShoalError)
    }
    doc = errors.__doc__ or ""
    assert {name for name in classes if name not in doc} == set()


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (NotFound("service x not found"), 404),
        (InvalidArgument("bad"), 400),
        (CSRError("invalid certificate signing request: bad signature"), 400),
        (Conflict("taken"), 409),
        (OutOfSequence(), 500),
        (FailedPrecondition("in use"), 400),
        (NodeNotInSwarm(), 503),
        (NotManager(), 503),
        (AlreadyInSwarm(), 503),
        (LeaveRefused("use --force"), 503),
        (Unauthenticated("no certificate"), 401),
        (PermissionDenied("worker"), 403),
        (ResourceExhausted("later"), 429),
        (Internal("oops"), 500),
        (ConstraintRejected("rpc error: code = Unknown desc = bad"), 500),
        (ListenFailed("listen tcp 127.0.0.1:1: address in use"), 500),
        (JoinFailed("cannot reach the manager"), 500),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Exception) else str(v),
)
def test_shoal_errors_answer_their_status_and_message(exc: ShoalError, status: int) -> None:
    assert http_error(exc) == (status, exc.message)


def test_aiohttp_errors_answer_as_dockerd() -> None:
    assert http_error(web.HTTPNotFound()) == (404, "page not found")
    assert http_error(web.HTTPMethodNotAllowed("GET", ["POST"])) == (405, "method not allowed")
    assert http_error(web.HTTPBadRequest(text="no upgrade")) == (400, "no upgrade")


def test_anything_else_is_a_500_that_hides_its_text() -> None:
    try:
        raise KeyError("/var/lib/secret-path")
    except KeyError as e:
        status, message = http_error(e, path="/services")
    assert status == 500
    assert "secret-path" not in message and message.startswith("internal error (reference ")


@pytest.mark.parametrize(
    ("lookup", "message"),
    [
        (resolve_service, "service nope not found"),
        (resolve_task, "task nope not found"),
        (resolve_node, "node nope not found"),
    ],
    ids=["service", "task", "node"],
)
def test_a_lookup_that_misses_is_docker_404(lookup: object, message: str) -> None:
    view = Store(MemoryBackend()).view()
    with pytest.raises(NotFound) as caught:
        lookup(view, "nope")  # type: ignore[operator]
    assert http_error(caught.value) == (404, message)


async def _through_the_api(exc: BaseException) -> tuple[int, dict[str, str]]:
    async def handler(request: web.Request) -> web.Response:
        raise exc

    app = web.Application(middlewares=[docker_middleware])
    app.router.add_get("/v1.41/boom", handler)
    async with TestClient(TestServer(app)) as client:
        resp = await client.get("/v1.41/boom")
        return resp.status, json.loads(await resp.read())


@pytest.mark.parametrize(
    ("exc", "status", "message"),
    [
        (NotFound("service nope not found"), 404, "service nope not found"),
        (NotManager(), 503, NotManager().message),
        (
            ConstraintRejected("rpc error: code = Unknown desc = x"),
            500,
            "rpc error: code = Unknown desc = x",
        ),
    ],
    ids=["not-found", "not-manager", "constraint"],
)
def test_the_api_answers_with_the_mapping(exc: ShoalError, status: int, message: str) -> None:
    assert asyncio.run(_through_the_api(exc)) == (status, {"message": message})


def test_the_api_hides_a_bug() -> None:
    status, body = asyncio.run(_through_the_api(ValueError("/root/.key")))
    assert status == 500 and "/root/.key" not in body["message"]
