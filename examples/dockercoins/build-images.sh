#!/usr/bin/env bash
# Build DockerCoins' images for the docker runtime (stack-docker.yml) on this machine,
# with no registry: no base image can be pulled here, so the base is made from the
# host's own files and `docker import`ed:
#   dockercoins/base  the host's python3 (binary, the shared libraries ldd names, the
#                     standard library, at the host's paths), the `redis` client package from the repository's
#                     .venv, and Debian's redis-server with its libraries;
#   dockercoins/{rng,hasher,worker,webui,redis}  FROM it, one Dockerfile each
#                     (Dockerfile.<service> beside this script), built by the engine's
#                     classic builder (no buildx needed).
# Against the engine the docker CLI talks to ($DOCKER_HOST, else /var/run/docker.sock).
# Environment: PYTHON (default: the repository's .venv/bin/python), PREFIX (default
# dockercoins), TAG (default latest).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
PREFIX="${PREFIX:-dockercoins}"
TAG="${TAG:-latest}"

log() { printf 'build-images: %s\n' "$*" >&2; }

work="$(mktemp -d /tmp/dockercoins-rootfs.XXXXXX)"
trap 'rm -rf "$work"' EXIT
rootfs="$work/rootfs"
mkdir -p "$rootfs"/{tmp,etc,app,usr/bin}
chmod 1777 "$rootfs/tmp"

# A file at the same path in the root filesystem, its content (not a link).
copy() {
    mkdir -p "$rootfs$(dirname "$1")"
    cp -L "$1" "$rootfs$1"
}
# The shared libraries (and the loader) the given ELF files need.
libs_of() {
    ldd "$@" 2>/dev/null | awk '/:$/ {next} $2 == "=>" && $3 ~ /^\// {print $3; next}
        $1 ~ /^\// {print $1}' | sort -u
}

# -------------------------------------------------------------- python and its stdlib
py="$("$PYTHON" -c 'import os, sys; print(os.path.realpath(sys._base_executable))')"
ver="$("$PYTHON" -c 'import sys; print(f"python{sys.version_info[0]}.{sys.version_info[1]}")')"
stdlib="$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')"
log "base from $py ($ver, stdlib $stdlib)"
# At the host's paths, so that it finds its standard library as on the host.
copy "$py"
[[ "$py" == /usr/bin/python3 ]] || ln -sf "$py" "$rootfs/usr/bin/python3"
mkdir -p "$rootfs$stdlib"
tar -C "$stdlib" -c \
    --exclude=__pycache__ --exclude=./test --exclude=./idlelib --exclude=./tkinter \
    --exclude=./site-packages --exclude=./dist-packages --exclude=./turtledemo --exclude=./ensurepip --exclude=./lib2to3 --exclude='./config-*' \
    . | tar -C "$rootfs$stdlib" -x
# The redis client package, where the base's python looks for site packages.
site="$("$py" -c 'import site; print(site.getsitepackages()[0])')"
redis_pkg="$("$PYTHON" -c 'import os, redis; print(os.path.dirname(redis.__file__))')"
mkdir -p "$rootfs$site"
cp -r "$redis_pkg" "$rootfs$site/redis"
find "$rootfs$site" -name __pycache__ -prune -exec rm -rf {} +

# -------------------------------------------------------------- redis-server
redis_server="$(command -v redis-server)" || {
    log "redis-server is missing: scripts/setup.sh installs it"
    exit 1
}
cp -L "$redis_server" "$rootfs/usr/bin/redis-server"

# -------------------------------------------------------------- libraries, /etc
for lib in $(libs_of "$py" "$redis_server" "$rootfs$stdlib"/lib-dynload/*.so); do
    copy "$lib"
done
printf 'root:x:0:0:root:/root:/bin/false\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' \
    >"$rootfs/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$rootfs/etc/group"
printf 'hosts: files dns\n' >"$rootfs/etc/nsswitch.conf"

log "importing $PREFIX/base:$TAG ($(du -sh "$rootfs" | cut -f1))"
tar -C "$rootfs" -c . | docker import \
    --change 'ENV PATH=/usr/local/bin:/usr/bin' \
    --change 'WORKDIR /app' \
    - "$PREFIX/base:$TAG" >/dev/null

# -------------------------------------------------------------- the services
for svc in rng hasher worker webui redis; do
    log "building $PREFIX/$svc:$TAG"
    # (the classic builder's deprecation notice kept out of sight unless it fails)
    if ! DOCKER_BUILDKIT=0 docker build -q --build-arg "BASE=$PREFIX/base:$TAG" \
        -t "$PREFIX/$svc:$TAG" -f "$HERE/Dockerfile.$svc" "$HERE" >"$work/build.log" 2>&1; then
        cat "$work/build.log" >&2
        exit 1
    fi
done
log "done: $PREFIX/{base,rng,hasher,worker,webui,redis}:$TAG"
