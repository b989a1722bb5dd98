"""The `shoal stack` commands: deploy, ls, services, rm."""

from __future__ import annotations

import re
from pathlib import Path

import typer

DEFAULT_HOST = "unix:///run/shoal/shoal.sock"
# A stack name prefixes every object's name (NAME_web), so it must be a valid part of one.
STACK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")

app = typer.Typer(
    help="Deploy and remove stacks (Compose files, format 3.x).", no_args_is_help=True
)


def _table(rows: list[dict[str, str]], columns: list[str]) -> None:
    """A docker-CLI-style table: columns padded to their widest cell, 3 spaces apart."""
    widths = {c: max([len(c), *(len(r[c]) for r in rows)]) for c in columns}
    for row in [dict(zip(columns, columns, strict=True)), *rows]:
        typer.echo("   ".join(f"{row[c]:<{widths[c]}}" for c in columns).rstrip())


HostOption = typer.Option(
    DEFAULT_HOST,
    "--host",
    "-H",
    envvar=["SHOAL_HOST", "DOCKER_HOST"],
    help="The daemon's API: unix:///PATH or tcp://ADDR:PORT.",
)


def _fail(command: str, message: str) -> typer.Exit:
    typer.echo(f"shoal stack {command}: {message}", err=True)
    return typer.Exit(1)


def _check_name(command: str, name: str) -> None:
    if not STACK_NAME.match(name):
        raise _fail(command, f"invalid stack name {name!r} (letters, digits, '-' and '_')")


@app.command()
def deploy(
    name: str = typer.Argument(..., help="The stack's name (prefixes every object's)."),
    compose_file: Path = typer.Option(..., "--compose-file", "-c", help="The Compose file."),
    prune: bool = typer.Option(
        False, "--prune", help="Remove the stack's services the file no longer names."
    ),
    host: str = HostOption,
) -> None:
    """Deploy a new stack or update an existing one. The whole file is checked first:
    a bad one is refused with the path of the bad key, and nothing is deployed."""
    from shoal.cli.client import APIError, Client
    from shoal.cli.stack.compose import ComposeError, load
    from shoal.cli.stack.convert import plan
    from shoal.cli.stack.deploy import StackError
    from shoal.cli.stack.deploy import deploy as run_deploy

    _check_name("deploy", name)
    try:
        f = load(compose_file)
        p = plan(name, f)
    except ComposeError as e:
        raise _fail("deploy", f"{compose_file}: {e}") from None
    if f.ignored:
        typer.echo(f"Ignoring unsupported options: {', '.join(f.ignored)}", err=True)
    try:
        run_deploy(Client.for_host(host), p, typer.echo, prune=prune)
    except (StackError, APIError) as e:
        raise _fail("deploy", str(getattr(e, "message", e))) from None
    except OSError as e:
        raise _fail("deploy", f"cannot reach the daemon at {host}: {e}") from None


@app.command("rm")
def rm(
    names: list[str] = typer.Argument(..., help="The stacks to remove."),
    host: str = HostOption,
) -> None:
    """Remove stacks: their services, secrets, configs and networks."""
    from shoal.cli.client import APIError, Client
    from shoal.cli.stack.deploy import StackError, remove

    client = Client.for_host(host)
    failed = False
    for name in names:
        _check_name("rm", name)
        try:
            if not remove(client, name, typer.echo):
                typer.echo(f"Nothing found in stack: {name}", err=True)
        except (StackError, APIError) as e:
            typer.echo(f"shoal stack rm: {getattr(e, 'message', e)}", err=True)
            failed = True
        except OSError as e:
            raise _fail("rm", f"cannot reach the daemon at {host}: {e}") from None
    if failed:
        raise typer.Exit(1)


@app.command("ls")
def ls(host: str = HostOption) -> None:
    """List stacks and how many services each has."""
    from shoal.cli.client import APIError, Client
    from shoal.cli.stack.deploy import stacks

    try:
        found = stacks(Client.for_host(host))
    except APIError as e:
        raise _fail("ls", e.message) from None
    except OSError as e:
        raise _fail("ls", f"cannot reach the daemon at {host}: {e}") from None
    _table([{"NAME": n, "SERVICES": str(c)} for n, c in found.items()], ["NAME", "SERVICES"])


@app.command("services")
def services_(name: str = typer.Argument(..., help="The stack."), host: str = HostOption) -> None:
    """List the stack's services with their replicas (running/desired)."""
    from shoal.cli.client import APIError, Client
    from shoal.cli.stack.deploy import services

    _check_name("services", name)
    try:
        rows = services(Client.for_host(host), name)
    except APIError as e:
        raise _fail("services", e.message) from None
    except OSError as e:
        raise _fail("services", f"cannot reach the daemon at {host}: {e}") from None
    if not rows:
        typer.echo(f"Nothing found in stack: {name}", err=True)
        return
    _table(rows, ["ID", "NAME", "MODE", "REPLICAS", "IMAGE"])
