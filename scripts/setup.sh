#!/usr/bin/env bash
# Set up everything shoal needs on this machine, idempotently:
#   - system tools (Debian packages, only what is missing): ip (iproute2), ps (procps),
#     a docker CLI (the machine's own if it has one, else Debian's docker.io), and
#     chromium with chromium-driver (the visualizer's browser test);
#     redis-server (the DockerCoins example);
#   - .venv at the repository root with shoal installed editable, with its dev extras.
# Fast when already done: apt is not touched when every tool is there, and pip runs
# only when pyproject.toml changed since the last install (a stamp in .venv).
#
# Environment: PYTHON (default python3, must be >= 3.11).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PYTHON="${PYTHON:-python3}"
VENV="$ROOT/.venv"
STAMP="$VENV/.shoal-setup-stamp"

log() { printf 'setup: %s\n' "$*" >&2; }

# ---------------------------------------------------------------- system packages
missing=()
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v ps >/dev/null 2>&1 || missing+=(procps)
# Networking: nft (the nftables rules of the data path), iperf3 (bench/net.py).
command -v nft >/dev/null 2>&1 || missing+=(nftables)
command -v iperf3 >/dev/null 2>&1 || missing+=(iperf3)
# wrk (the load generator) and haproxy (the comparison) of bench/mesh.py.
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)
# The Prometheus server the metrics test scrapes the daemons with (it starts its own
# process on loopback; the package's service is not used).
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
# The DockerCoins example's store (examples/dockercoins): the real redis-server, run
# as a task (the package's own service is not used).
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
# etcd for several managers (docs/ha.md): the member a manager's daemon runs, and
# etcdctl for backups (`etcdctl snapshot save`) and inspection.
command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || missing+=(etcd-client)
# The visualizer's browser test: Debian's chromium, driven through its chromium-driver
# by selenium (no browser is downloaded: the test uses these two).
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
# The image usually ships the docker CLI 28 as /usr/local/bin/docker, but no engine:
# Debian's docker.io brings dockerd (the docker runtime's engine; its /usr/bin/docker
# CLI stays behind /usr/local/bin on PATH), busybox-static the root filesystem of the
# test images (made offline with `docker import`), docker-registry the local registry
# the pull tests push to. (Debian's `busybox` package would replace busybox-static.)
command -v docker >/dev/null 2>&1 || missing+=(docker.io)
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v docker-registry >/dev/null 2>&1 || missing+=(docker-registry)
dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'ok installed' \
    || missing+=(busybox-static)
if ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    missing+=(python3-venv)
fi

if ((${#missing[@]})); then
    if ! command -v apt-get >/dev/null 2>&1; then
        log "missing ${missing[*]} and no apt-get to install them; install them by hand"
        exit 1
    fi
    SUDO=()
    if [[ "$(id -u)" != 0 ]]; then
        if command -v sudo >/dev/null 2>&1; then
            SUDO=(sudo -n)
        else
            log "missing ${missing[*]}; run this script as root to install them"
            exit 1
        fi
    fi
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    "${SUDO[@]}" apt-get update -qq
    # Sorted, without duplicates (docker.io may be asked for twice).
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

for tool in ip ps docker dockerd docker-registry busybox prometheus chromium chromedriver \
    redis-server; do
    command -v "$tool" >/dev/null 2>&1 || { log "$tool is still missing after install"; exit 1; }
done

# ---------------------------------------------------------------- python venv
if ! "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'; then
    log "$PYTHON is $("$PYTHON" -V 2>&1); shoal needs Python >= 3.11 (set PYTHON=...)"
    exit 1
fi

if [[ ! -x "$VENV/bin/python" ]] || ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
    log "creating $VENV"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    rm -f "$STAMP"
fi

want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
have="$(cat "$STAMP" 2>/dev/null || true)"
if [[ "$want" != "$have" || ! -x "$VENV/bin/shoal" ]] \
    || ! "$VENV/bin/python" -c 'import shoal' >/dev/null 2>&1; then
    log "installing shoal (editable) with its dev extras into $VENV"
    export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
    "$VENV/bin/python" -m pip install -q -e '.[dev]'
    printf '%s\n' "$want" >"$STAMP"
fi

if [[ ! -x "$VENV/bin/shoal" ]]; then
    log "$VENV/bin/shoal is missing after install"
    exit 1
fi
