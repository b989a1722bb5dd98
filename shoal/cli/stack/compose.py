"""A Compose file (format 3.x), read and checked whole before anything is deployed.

The file is YAML (PyYAML, YAML 1.1 as Go's yaml reads it, but without the base-60
numbers that would turn an unquoted `22:22` into 1342), with `${VAR}` interpolated
from the environment as the docker CLI does. It is then decoded into the typed
`ComposeFile` below (msgspec Structs that refuse unknown keys), one mapping entry at a
time so that every error names the path of the bad key in the file's own terms:

    services.web.deploy.replicas: expected an integer, got a string
    services.web.deploy.replica: unknown key (known: endpoint_mode, labels, mode, ...)

Keys the docker CLI knows but Swarm ignores (`build`, `depends_on`, `restart`, ...)
are accepted and reported by `ComposeFile.ignored`, as `docker stack deploy` warns of
them; `x-` extension keys are dropped at the top level and in each service, network,
secret and config.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import msgspec
import yaml

T = TypeVar("T")


class ComposeError(Exception):
    """A Compose file refused: `path` is the dotted path of the bad key (empty for the
    file as a whole)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.message = message


# --------------------------------------------------------------------------- the model


class _Model(msgspec.Struct, forbid_unknown_fields=True):
    pass


StrOrList = str | list[str]
# A count: the engine's fields are unsigned, so a negative one is refused here, before
# anything is created, rather than by the daemon halfway through a deploy.
Count = Annotated[int, msgspec.Meta(ge=0)]
Ratio = Annotated[float, msgspec.Meta(ge=0, le=1)]
# Compose allows numbers and booleans as map values where the engine wants strings.
Scalar = str | int | float | bool | None
StrMap = dict[str, Scalar] | list[str]


class Limits(_Model):
    cpus: str | float | None = None
    memory: str | int | None = None
    pids: Count | None = None


class DiscreteResource(_Model):
    kind: str
    value: int


class GenericResource(_Model):
    discrete_resource_spec: DiscreteResource


class Reservations(_Model):
    cpus: str | float | None = None
    memory: str | int | None = None
    generic_resources: list[GenericResource] | None = None


class Resources(_Model):
    limits: Limits | None = None
    reservations: Reservations | None = None


class RestartPolicy(_Model):
    condition: Literal["none", "on-failure", "any"] | None = None
    delay: str | None = None
    max_attempts: Count | None = None
    window: str | None = None


class UpdateConfig(_Model):
    parallelism: Count | None = None
    delay: str | None = None
    failure_action: Literal["continue", "pause", "rollback"] | None = None
    monitor: str | None = None
    max_failure_ratio: Ratio | None = None
    order: Literal["start-first", "stop-first"] | None = None


class Preference(_Model):
    spread: str


class Placement(_Model):
    constraints: list[str] | None = None
    preferences: list[Preference] | None = None
    max_replicas_per_node: Count | None = None


class Deploy(_Model):
    mode: Literal["replicated", "global", "replicated-job", "global-job"] | None = None
    replicas: Count | None = None
    labels: StrMap | None = None
    placement: Placement | None = None
    resources: Resources | None = None
    restart_policy: RestartPolicy | None = None
    update_config: UpdateConfig | None = None
    rollback_config: UpdateConfig | None = None
    endpoint_mode: Literal["vip", "dnsrr"] | None = None


class Healthcheck(_Model):
    test: StrOrList | None = None
    interval: str | None = None
    timeout: str | None = None
    retries: Count | None = None
    start_period: str | None = None
    disable: bool | None = None


class PortLong(_Model):
    target: int
    published: int | None = None
    protocol: Literal["tcp", "udp", "sctp"] | None = None
    mode: Literal["ingress", "host"] | None = None


class FileRef(_Model):
    """A service's use of a secret or config, long syntax."""

    source: str
    target: str | None = None
    uid: str | None = None
    gid: str | None = None
    mode: int | None = None


class Ulimit(_Model):
    soft: int
    hard: int


class Logging(_Model):
    driver: str | None = None
    options: dict[str, Scalar] | None = None


class BindOptions(_Model):
    propagation: str | None = None


class VolumeOptions(_Model):
    nocopy: bool | None = None


class TmpfsOptions(_Model):
    size: int | str | None = None


class Mount(_Model):
    """A service's volume, long syntax."""

    type: Literal["bind", "volume", "tmpfs"]
    target: str
    source: str | None = None
    read_only: bool | None = None
    consistency: str | None = None
    bind: BindOptions | None = None
    volume: VolumeOptions | None = None
    tmpfs: TmpfsOptions | None = None


class NetworkAttachment(_Model):
    aliases: list[str] | None = None


# What `docker stack deploy` accepts but Swarm does not use (it warns "Ignoring
# unsupported options"): kept out of the typed service, reported by name.
IGNORED_SERVICE_KEYS = frozenset(
    {
        "build",
        "cgroup_parent",
        "container_name",
        "depends_on",
        "devices",
        "external_links",
        "links",
        "network_mode",
        "security_opt",
        "userns_mode",
    }
)


class Service(_Model):
    image: str
    command: StrOrList | None = None
    entrypoint: StrOrList | None = None
    environment: StrMap | None = None
    labels: StrMap | None = None
    ports: list[str | int | PortLong] | None = None
    networks: list[str] | dict[str, Any] | None = None
    secrets: list[str | FileRef] | None = None
    configs: list[str | FileRef] | None = None
    healthcheck: Healthcheck | None = None
    deploy: Deploy | None = None
    # no | always | unless-stopped | on-failure[:N]: the restart policy when `deploy`
    # has none, as the docker CLI converts it.
    restart: str | None = None
    hostname: str | None = None
    user: str | None = None
    working_dir: str | None = None
    stop_grace_period: str | None = None
    stop_signal: str | None = None
    init: bool | None = None
    read_only: bool | None = None
    tty: bool | None = None
    stdin_open: bool | None = None
    extra_hosts: list[str] | None = None
    cap_add: list[str] | None = None
    cap_drop: list[str] | None = None
    sysctls: StrMap | None = None
    ulimits: dict[str, int | Ulimit] | None = None
    dns: StrOrList | None = None
    dns_search: StrOrList | None = None
    logging: Logging | None = None
    volumes: list[str | Mount] | None = None


class IPAMConfig(_Model):
    subnet: str


class IPAM(_Model):
    driver: str | None = None
    config: list[IPAMConfig] | None = None


class Network(_Model):
    driver: str | None = None
    driver_opts: dict[str, Scalar] | None = None
    attachable: bool | None = None
    internal: bool | None = None
    labels: StrMap | None = None
    ipam: IPAM | None = None
    external: bool | None = None
    name: str | None = None


class FileObject(_Model):
    """A top-level secret or config: from a file, or external (made beforehand)."""

    file: str | None = None
    external: bool | None = None
    name: str | None = None
    labels: StrMap | None = None
    template_driver: str | None = None


class Volume(_Model):
    """A top-level named volume."""

    driver: str | None = None
    driver_opts: dict[str, Scalar] | None = None
    external: bool | None = None
    labels: StrMap | None = None
    name: str | None = None


class ComposeFile(msgspec.Struct, frozen=True):
    services: dict[str, Service]
    networks: dict[str, Network]
    volumes: dict[str, Volume]
    secrets: dict[str, FileObject]
    configs: dict[str, FileObject]
    # Where relative `file:` paths start: the Compose file's directory.
    base_dir: Path
    # "services.web.build", ...: accepted, not used (a warning).
    ignored: list[str]


_TOP_KEYS = ("version", "services", "networks", "secrets", "configs", "volumes")

# --------------------------------------------------------------------------- loading


class _Loader(yaml.SafeLoader):
    """SafeLoader without YAML 1.1's base-60 numbers (`22:22` stays a string, as in
    Go's yaml)."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in ("tag:yaml.org,2002:int",)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:int",
    re.compile(
        r"""^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$""",
        re.X,
    ),
    list("-+0123456789"),
)

_VAR = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[_a-zA-Z][_a-zA-Z0-9]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|(?P<named>[_a-zA-Z][_a-zA-Z0-9]*)|(?P<invalid>))"
)


def interpolate(value: str, env: Mapping[str, str], path: str) -> str:
    """`$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?err}`,
    `${VAR?err}`; `$$` is a literal `$`. An unset variable is empty."""

    def sub(m: re.Match[str]) -> str:
        if m.group("escaped"):
            return "$"
        if m.group("invalid") is not None and not m.group("named") and not m.group("braced"):
            raise ComposeError(path, f"invalid interpolation format in {value!r}")
        name = m.group("braced") or m.group("named")
        op, arg = m.group("op"), m.group("arg") or ""
        got = env.get(name)
        if op in (":-", "-"):
            if got is None or (op == ":-" and got == ""):
                return arg
        elif op in (":?", "?") and (got is None or (op == ":?" and got == "")):
            raise ComposeError(path, f"required variable {name} is missing a value: {arg}")
        return got or ""

    return _VAR.sub(sub, value)


# Keys whose value is a number or a boolean: `replicas: ${N}` interpolates to the text
# "3", read again as YAML here, as the docker CLI casts these after interpolation.
_CAST_KEYS = frozenset(
    {
        "replicas",
        "parallelism",
        "max_attempts",
        "max_failure_ratio",
        "max_replicas_per_node",
        "retries",
        "target",
        "published",
        "pids",
        "soft",
        "hard",
        "mode",
        "attachable",
        "internal",
        "external",
        "disable",
        "init",
        "read_only",
        "tty",
        "stdin_open",
        "nocopy",
    }
)


def _interpolate_all(node: Any, env: Mapping[str, str], path: str) -> Any:
    if isinstance(node, str):
        value = interpolate(node, env, path)
        if value != node and path.rpartition(".")[2] in _CAST_KEYS:
            cast = yaml.load(value, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
            if isinstance(cast, int | float):  # bool is an int
                return cast
        return value
    if isinstance(node, dict):
        return {k: _interpolate_all(v, env, _join(path, str(k))) for k, v in node.items()}
    if isinstance(node, list):
        return [_interpolate_all(v, env, f"{path}[{i}]") for i, v in enumerate(node)]
    return node


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


# --------------------------------------------------------------------------- decoding

_TYPE_NAMES = {
    "int": "an integer",
    "float": "a number",
    "str": "a string",
    "bool": "a boolean",
    "null": "null",
    "array": "a list",
    "object": "a mapping",
}
_EXPECTED = re.compile(r"^Expected `(?P<want>[^`]*)`, got `(?P<got>[^`]*)`")
_UNKNOWN = re.compile(r"^Object contains unknown field `(?P<key>[^`]*)`")
_MISSING = re.compile(r"^Object missing required field `(?P<key>[^`]*)`")
_BOUND = re.compile(r"^Expected `(?P<want>[^`]*)` (?P<bound>[<>]=? \S+)$")
_ENUM = re.compile(r"^Invalid enum value (?P<value>.*)$")
_AT = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<at>[^`]*)`)?$", re.S)


def _names(typ: str) -> str:
    parts = [_TYPE_NAMES.get(p.strip(), p.strip()) for p in typ.split("|")]
    parts = [p for p in parts if p != "null"] or parts
    return " or ".join(dict.fromkeys(parts))


def _fields_of(cls: type) -> list[str]:
    return sorted(f.encode_name for f in msgspec.structs.fields(cls))


def _struct_at(cls: type, at: str) -> type | None:
    """The Struct class at a msgspec path (`.deploy.placement`) below `cls`, to list
    the keys it knows."""
    current: Any = cls
    for part in re.findall(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[\d+\]", at):
        if not part:
            continue
        hints = msgspec.structs.fields(current) if _is_struct(current) else ()
        field = next((f for f in hints if f.encode_name == part), None)
        if field is None:
            return None
        current = _struct_in(field.type)
        if current is None:
            return None
    return current if _is_struct(current) else None


def _is_struct(t: Any) -> bool:
    return isinstance(t, type) and issubclass(t, msgspec.Struct)


def _struct_in(t: Any) -> type | None:
    """The Struct inside a field's type (`Deploy | None`, `list[str | PortLong]`)."""
    if _is_struct(t):
        return t
    for arg in getattr(t, "__args__", ()) or ():
        found = _struct_in(arg)
        if found is not None:
            return found
    return None


def _choices(cls: type, at: str) -> list[str]:
    """The values a Literal field at a msgspec path allows."""
    head, _, key = at.rpartition(".")
    owner = _struct_at(cls, head) if head else cls
    if owner is None:
        return []
    field = next((f for f in msgspec.structs.fields(owner) if f.encode_name == key), None)
    if field is None:
        return []
    return [a for a in _literal_args(field.type) if isinstance(a, str)]


def _literal_args(t: Any) -> list[Any]:
    if getattr(t, "__origin__", None) is Literal:
        return list(t.__args__)
    return [a for arg in getattr(t, "__args__", ()) or () for a in _literal_args(arg)]


def decode(value: Any, cls: type[T], path: str) -> T:
    """`value` as `cls`, or a ComposeError naming the bad key's path below `path`."""
    try:
        return msgspec.convert(value, cls, strict=True)
    except msgspec.ValidationError as e:
        m = _AT.match(str(e))
        assert m is not None
        msg, at = m.group("msg"), (m.group("at") or "")
        where = path + re.sub(r"\[\.\.\.\]", "", at)
        if u := _UNKNOWN.match(msg):
            owner = _struct_at(cls, at) or cls
            known = ", ".join(_fields_of(owner))
            raise ComposeError(_join(where, u["key"]), f"unknown key (known: {known})") from None
        if r := _MISSING.match(msg):
            raise ComposeError(_join(where, r["key"]), "required key missing") from None
        if x := _EXPECTED.match(msg):
            raise ComposeError(
                where, f"expected {_names(x['want'])}, got {_names(x['got'])}"
            ) from None
        if b := _BOUND.match(msg):
            raise ComposeError(where, f"expected {_names(b['want'])} {b['bound']}") from None
        if n := _ENUM.match(msg):
            choices = _choices(cls, at)
            hint = f" (expected one of: {', '.join(choices)})" if choices else ""
            raise ComposeError(where, f"invalid value {n['value']}{hint}") from None
        raise ComposeError(where, msg) from None


def _mapping(value: Any, path: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ComposeError(path, f"expected a mapping, got {_py_type(value)}")
    for k in value:
        if not isinstance(k, str):
            raise ComposeError(path, f"keys must be strings, got {k!r}")
    return value


def _py_type(v: Any) -> str:
    if isinstance(v, bool):
        return "a boolean"
    return {int: "an integer", float: "a number", str: "a string", list: "a list"}.get(
        type(v), "a mapping" if isinstance(v, dict) else type(v).__name__
    )


def _no_extensions(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if not k.startswith("x-")}


def parse(text: str, base_dir: Path, env: Mapping[str, str] | None = None) -> ComposeFile:
    """The Compose file `text`, checked whole, or a ComposeError."""
    try:
        raw = yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise ComposeError("", f"not valid YAML: {e}") from None
    top = _no_extensions(_mapping(raw, ""))
    for key in top:
        if key not in _TOP_KEYS:
            raise ComposeError(key, f"unknown key (known: {', '.join(sorted(_TOP_KEYS))})")
    version = top.get("version")
    if version is not None and not str(version).startswith("3"):
        raise ComposeError("version", f"unsupported Compose file version {version!r}: 3.x only")
    top = _interpolate_all(top, os.environ if env is None else env, "")
    ignored: list[str] = []
    services: dict[str, Service] = {}
    raw_services = _mapping(top.get("services"), "services")
    if not raw_services:
        raise ComposeError("services", "at least one service is required")
    for name, body in raw_services.items():
        path = f"services.{name}"
        body = _no_extensions(_mapping(body, path))
        for key in sorted(IGNORED_SERVICE_KEYS & body.keys()):
            ignored.append(f"{path}.{key}")
        used = {k: v for k, v in body.items() if k not in IGNORED_SERVICE_KEYS}
        for key, limit in _mapping(used.get("ulimits"), f"{path}.ulimits").items():
            if not isinstance(limit, int) or isinstance(limit, bool):
                decode(limit, Ulimit, f"{path}.ulimits.{key}")
        svc = decode(used, Service, path)
        if isinstance(svc.networks, dict):
            for net, att in svc.networks.items():
                decode(att or {}, NetworkAttachment, f"{path}.networks.{net}")
        services[name] = svc
    return ComposeFile(
        services=services,
        networks=_section(top, "networks", Network),
        volumes=_section(top, "volumes", Volume),
        secrets=_section(top, "secrets", FileObject),
        configs=_section(top, "configs", FileObject),
        base_dir=base_dir,
        ignored=ignored,
    )


def _section(top: dict[str, Any], key: str, cls: type[T]) -> dict[str, T]:
    out: dict[str, T] = {}
    for name, body in _mapping(top.get(key), key).items():
        path = f"{key}.{name}"
        out[name] = decode(_no_extensions(_mapping(body, path)), cls, path)
    return out


def load(path: Path, env: Mapping[str, str] | None = None) -> ComposeFile:
    """The file at `path`; `-` is standard input (relative `file:`s then start at the
    working directory), as `docker stack deploy -c -` reads it."""
    if str(path) == "-":
        return parse(sys.stdin.read(), Path.cwd(), env)
    try:
        text = path.read_text()
    except OSError as e:
        raise ComposeError("", f"cannot read {path}: {e.strerror}") from None
    return parse(text, path.resolve().parent, env)
