"""The `shoal` command: daemon and cluster lifecycle, and the everyday commands."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import typer

from shoal import __version__
from shoal.cli.stack.commands import app as stack_app

app = typer.Typer(
    help="shoal: a container orchestrator with Docker Swarm mode semantics.",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(stack_app, name="stack")


def _parse_labels(labels: list[str]) -> dict[str, str]:
    out = {}
    for item in labels:
        k, sep, v = item.partition("=")
        if not k or not sep:
            raise typer.BadParameter(f"label {item!r} must be key=value")
        out[k] = v
    return out


@app.command()
def daemon(
    data_dir: Path = typer.Option(Path("/var/lib/shoal"), "--data-dir", help="State directory."),
    host: list[str] = typer.Option(
        None,
        "--host",
        "-H",
        help="Where to serve the Docker API: unix:///PATH or tcp://ADDR:PORT (repeatable).",
    ),
    runtime: str = typer.Option(
        "auto",
        "--runtime",
        help="auto | process | docker | sim (auto: docker when an engine answers; "
        "sim: hollow tasks, docs/sim.md).",
    ),
    engine_host: str = typer.Option(
        "unix:///var/run/docker.sock",
        "--engine-host",
        help="The Docker Engine of the docker runtime: unix:///PATH or tcp://ADDR:PORT.",
    ),
    node_name: str = typer.Option("", "--node-name", help="The node's hostname in the cluster."),
    label: list[str] = typer.Option(None, "--label", help="Engine label k=v (repeatable)."),
    live_restore: bool = typer.Option(
        False, "--live-restore", help="Keep tasks running while the daemon is down."
    ),
    resources_cpus: float = typer.Option(
        None, "--resources-cpus", help="CPUs this node offers the scheduler (default: measured)."
    ),
    resources_memory: int = typer.Option(
        None, "--resources-memory", help="Memory bytes this node offers (default: measured)."
    ),
    tls: bool = typer.Option(False, "--tls", help="Serve tcp:// hosts over TLS."),
    tlsverify: bool = typer.Option(
        False,
        "--tlsverify",
        help="Serve tcp:// hosts over TLS and admit only clients with a certificate "
        "from --tlscacert (implies --tls).",
    ),
    tlscacert: Path = typer.Option(
        None, "--tlscacert", help="Trust client certificates signed only by this CA."
    ),
    tlscert: Path = typer.Option(None, "--tlscert", help="Path to the TLS certificate file."),
    tlskey: Path = typer.Option(None, "--tlskey", help="Path to the TLS key file."),
    insecure_tcp: bool = typer.Option(
        False,
        "--insecure-tcp",
        help="Allow a tcp:// host on a non-loopback address without --tlsverify: anyone "
        "who reaches it is root on this machine.",
    ),
    visualizer_addr: str = typer.Option(
        "",
        "--visualizer-addr",
        help="Also serve the visualizer (read-only, no authentication) on HOST:PORT; "
        "every manager serves it at /visualizer on its API hosts anyway.",
    ),
    datastore_endpoint: list[str] = typer.Option(
        None,
        "--datastore-endpoint",
        help="Keep the manager's state in this etcd (https://HOST:PORT, repeatable) "
        "instead of SQLite; it must run with --max-txn-ops=16384 (docs/ha.md).",
    ),
    datastore_cafile: Path = typer.Option(
        None, "--datastore-cafile", help="The etcd server's CA (PEM)."
    ),
    datastore_certfile: Path = typer.Option(
        None, "--datastore-certfile", help="The client certificate for etcd (PEM)."
    ),
    datastore_keyfile: Path = typer.Option(
        None, "--datastore-keyfile", help="The client key for etcd (PEM)."
    ),
    log_level: str = typer.Option("info", "--log-level"),
) -> None:
    """Run the shoal daemon (agent, and manager once in a swarm)."""
    from shoal import log
    from shoal.api.listen import (
        APITLS,
        DEFAULT_CA_FILE,
        DEFAULT_CERT_FILE,
        DEFAULT_KEY_FILE,
        HostError,
        check_hosts,
        default_cert_dir,
    )
    from shoal.daemon.config import RUNTIMES, DaemonConfig
    from shoal.daemon.daemon import serve

    if runtime not in RUNTIMES:
        raise typer.BadParameter(f"unknown runtime {runtime!r}: choose from {', '.join(RUNTIMES)}")
    hosts = host or ["unix:///run/shoal/shoal.sock"]
    api_tls = None
    if tls or tlsverify:
        certs = default_cert_dir()
        api_tls = APITLS(
            cert=tlscert or certs / DEFAULT_CERT_FILE,
            key=tlskey or certs / DEFAULT_KEY_FILE,
            cacert=tlscacert or certs / DEFAULT_CA_FILE,
            verify=tlsverify,
        )
    try:  # refused before anything starts, with dockerd's reasons
        check_hosts(hosts, api_tls, insecure_tcp)
        if api_tls is not None:
            api_tls.context()
    except HostError as e:
        typer.echo(f"shoal daemon: {e}", err=True)
        raise typer.Exit(1) from None
    viz_addr = None
    if visualizer_addr:
        viz_host, sep, viz_port = visualizer_addr.rpartition(":")
        if not sep or not viz_port.isdigit() or not 0 < int(viz_port) < 65536:
            typer.echo(
                f"shoal daemon: invalid --visualizer-addr {visualizer_addr!r}: use HOST:PORT",
                err=True,
            )
            raise typer.Exit(1)
        viz_addr = (viz_host.strip("[]"), int(viz_port))
    datastore = None
    if datastore_endpoint:
        from shoal.manager.etcd.datastore import DatastoreConfig

        files = (datastore_cafile, datastore_certfile, datastore_keyfile)
        if any(f is None for f in files):
            typer.echo(
                "shoal daemon: --datastore-endpoint needs --datastore-cafile, "
                "--datastore-certfile and --datastore-keyfile (etcd over mutual TLS)",
                err=True,
            )
            raise typer.Exit(1)
        datastore = DatastoreConfig(
            list(datastore_endpoint), datastore_cafile, datastore_certfile, datastore_keyfile
        )
    log.setup(log_level)
    config = DaemonConfig(
        data_dir=data_dir,
        hosts=hosts,
        runtime=runtime,
        node_name=node_name or socket.gethostname(),
        labels=_parse_labels(label or []),
        live_restore=live_restore,
        engine_host=engine_host,
        resources_cpus=resources_cpus,
        resources_memory=resources_memory,
        api_tls=api_tls,
        insecure_tcp=insecure_tcp,
        visualizer_addr=viz_addr,
        datastore=datastore,
    )
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        asyncio.run(serve(config))
    else:
        uvloop.run(serve(config))


@app.command()
def version() -> None:
    """Print shoal's version."""
    typer.echo(__version__)


@app.command(name="demo")
def demo_command(
    data_dir: Path = typer.Option(
        Path("/tmp/shoal-demo"), "--data-dir", help="Where the demo keeps its state (wiped first)."
    ),
    port: int = typer.Option(8000, "--port", help="Published port of the DockerCoins web UI."),
    duration: float = typer.Option(
        -1.0, "--duration", help="Seconds to keep running (default: until Ctrl-C)."
    ),
    visualizer_port: int = typer.Option(
        8081, "--visualizer-port", help="Port of the visualizer page (on 127.0.0.1)."
    ),
) -> None:
    """Run a single-node cluster running DockerCoins (the main job)."""
    from shoal.cli.demo import demo

    demo(data_dir=data_dir, port=port, duration=duration, visualizer_port=visualizer_port)


@app.command(name="sim")
def sim_command(
    nodes: int = typer.Option(..., "--nodes", min=1, help="How many hollow nodes to run."),
    join: str = typer.Option(..., "--join", help="A manager's cluster port, ADDR:PORT."),
    token: str = typer.Option(..., "--token", help="The swarm's worker join token."),
    start_delay: float = typer.Option(
        0.0, "--start-delay", min=0.0, help="Milliseconds a task takes to start."
    ),
    fail_ratio: float = typer.Option(
        0.0, "--fail-ratio", min=0.0, max=1.0, help="Share of task starts that fail."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the failures (replayable runs)."),
    job_run: float = typer.Option(
        0.0, "--job-run", min=0.0, help="Milliseconds a job's task runs before it exits 0."
    ),
    name_prefix: str = typer.Option("hollow", "--name-prefix", help="Nodes are PREFIX-<i>."),
    data_dir: Path = typer.Option(
        None, "--data-dir", help="Keep each node's certificate here (rejoin as the same nodes)."
    ),
    log_level: str = typer.Option("warning", "--log-level"),
) -> None:
    """Run N hollow nodes (real agents, pretend tasks) in one process: docs/sim.md."""
    from shoal import log
    from shoal.cli.sim import sim

    log.setup(log_level)
    sim(nodes, join, token, start_delay, fail_ratio, seed, job_run, name_prefix, data_dir)
