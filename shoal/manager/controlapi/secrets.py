"""Secret and config operations behind the API, as SwarmKit's control API does them:
validation, then one store transaction each. Both kinds are immutable but for their
labels, and cannot be removed while a service refers to them.

Secret payloads are never part of an error message or a log line.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from shoal.errors import Conflict, InvalidArgument, NotFound, OutOfSequence, invalid_argument
from shoal.ids import new_id
from shoal.manager.store import ReadTx, Store, Tx
from shoal.types.secret import Config, ConfigSpec, Secret, SecretMeta, SecretSpec
from shoal.types.service import Service

# Payload limits (SwarmKit's api/validation MaxSecretSize and controlapi MaxConfigSize):
# the data must be larger than 0 and less than these many bytes.
MAX_SECRET_BYTES = 500 * 1024
MAX_CONFIG_BYTES = 1000 * 1024
MAX_NAME_LENGTH = 64
_NAME = re.compile(r"^[a-zA-Z0-9]+(?:[a-zA-Z0-9-_.]*[a-zA-Z0-9])?$")
# The only template driver configs and secrets may name (as Docker).
TEMPLATE_DRIVERS = ("golang",)

Item = Secret | Config


def validate_name(name: str | None) -> str:
    if not name:
        raise invalid_argument("name must be provided")
    if len(name) > MAX_NAME_LENGTH or not _NAME.match(name):
        raise invalid_argument(
            "invalid name, only 64 [a-zA-Z0-9-_.] characters allowed, and the start and "
            "end character must be [a-zA-Z0-9]"
        )
    return name


def _validate_templating(spec: SecretSpec | ConfigSpec) -> None:
    t = spec.templating
    if t is not None and t.name and t.name not in TEMPLATE_DRIVERS:
        raise invalid_argument(f"unsupported template driver: {t.name}")


def validate_secret(spec: SecretSpec) -> bytes:
    """Check a new secret's spec; returns its payload."""
    validate_name(spec.name)
    if spec.driver is not None and spec.driver.name:
        raise invalid_argument(
            f"secret driver {spec.driver.name!r} is not supported: shoal keeps secret "
            "data in its own store only"
        )
    _validate_templating(spec)
    data = spec.data or b""
    if len(data) >= MAX_SECRET_BYTES or len(data) < 1:
        raise invalid_argument(
            f"secret data must be larger than 0 and less than {MAX_SECRET_BYTES} bytes"
        )
    return data


def validate_config(spec: ConfigSpec) -> None:
    validate_name(spec.name)
    _validate_templating(spec)
    data = spec.data or b""
    if len(data) >= MAX_CONFIG_BYTES or len(data) < 1:
        raise invalid_argument(
            f"config data must be larger than 0 and less than {MAX_CONFIG_BYTES} bytes"
        )


def _items(tx: ReadTx, kind: str) -> list[Any]:
    return tx.secrets() if kind == "secret" else tx.configs()


def _taken(tx: ReadTx, kind: str, name: str) -> bool:
    lower = name.lower()
    return any((o.spec.name or "").lower() == lower for o in _items(tx, kind))


def resolve(tx: ReadTx, kind: str, ref: str) -> Any:
    """A secret or config by full ID, exact name, or unique ID prefix (as dockerd)."""
    obj = tx.get(kind, ref)
    if obj is not None:
        return obj
    items = _items(tx, kind)
    for o in items:
        if o.spec.name == ref:
            return o
    matches = [o for o in items if o.id.startswith(ref)] if ref else []
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise InvalidArgument(f"{kind} {ref} is ambiguous ({len(matches)} matches found)")
    raise NotFound(f"{kind} {ref} not found")


def referenced_ids(service: Service, kind: str) -> list[str]:
    tt = service.spec.task_template
    cs = tt.container_spec if tt else None
    if cs is None:
        return []
    if kind == "secret":
        return [r.secret_id for r in cs.secrets or () if r.secret_id]
    return [r.config_id for r in cs.configs or () if r.config_id]


async def create_secret(store: Store, spec: SecretSpec) -> Secret:
    data = validate_secret(spec)
    stored = msgspec.structs.replace(spec, data=None, labels=spec.labels or {})

    def write(tx: Tx) -> Secret:
        assert stored.name is not None
        if _taken(tx, "secret", stored.name):
            raise Conflict(
                f"rpc error: code = AlreadyExists desc = secret {stored.name} already exists"
            )
        return tx.create(Secret(id=new_id(), spec=stored), SecretMeta(data=data))

    return await store.update(write)


async def create_config(store: Store, spec: ConfigSpec) -> Config:
    validate_config(spec)
    stored = msgspec.structs.replace(spec, labels=spec.labels or {})

    def write(tx: Tx) -> Config:
        assert stored.name is not None
        if _taken(tx, "config", stored.name):
            raise Conflict(
                f"rpc error: code = AlreadyExists desc = config {stored.name} already exists"
            )
        return tx.create(Config(id=new_id(), spec=stored))

    return await store.update(write)


_ONLY_LABELS = "only updates to Labels are allowed"


async def update(store: Store, kind: str, ref: str, version: int, spec: Any) -> None:
    """`POST /{secrets,configs}/{id}/update?version=N`: only the labels may change
    (a client may send the same name and data back, as `stack deploy` does)."""

    def write(tx: Tx) -> None:
        current = resolve(tx, kind, ref)
        if current.version.index != version:
            raise OutOfSequence()
        if spec.name != current.spec.name:
            raise invalid_argument(_ONLY_LABELS)
        stored = tx.secret_data(current.id) if kind == "secret" else current.spec.data
        if spec.data is not None and spec.data != stored:
            raise invalid_argument(_ONLY_LABELS)
        labels = spec.labels or {}
        tx.update(
            msgspec.structs.replace(
                current, spec=msgspec.structs.replace(current.spec, labels=labels)
            )
        )

    await store.update(write)


async def remove(store: Store, kind: str, ref: str) -> None:
    def write(tx: Tx) -> None:
        obj = resolve(tx, kind, ref)
        users = [s.spec.name or s.id for s in tx.services() if obj.id in referenced_ids(s, kind)]
        if users:
            noun = "service" if len(users) == 1 else "services"
            raise invalid_argument(
                f"{kind} '{obj.spec.name}' is in use by the following {noun}: " + ", ".join(users)
            )
        tx.delete(kind, obj.id)

    await store.update(write)


def check_references(tx: ReadTx, service: Service) -> None:
    """Every secret and config a service names exists under that name, and no two of
    them share a target (SwarmKit's checkSecretExistence / checkConfigExistence)."""
    tt = service.spec.task_template
    cs = tt.container_spec if tt else None
    if cs is None:
        return
    for kind, refs in (
        ("secret", [(r.secret_id, r.secret_name) for r in cs.secrets or ()]),
        ("config", [(r.config_id, r.config_name) for r in cs.configs or ()]),
    ):
        failed = []
        for id_, name in refs:
            obj = tx.get(kind, id_ or "")
            if obj is None or obj.spec.name != name:
                failed.append(name or id_ or "")
        if failed:
            noun = kind if len(failed) == 1 else kind + "s"
            raise invalid_argument(f"{noun} not found: {', '.join(failed)}")
    targets: dict[str, str] = {}
    for ref_name, file in [(r.secret_name or "", r.file) for r in cs.secrets or ()]:
        if file is None:
            raise invalid_argument("malformed secret ref")
        target = str(file.get("Name") or "")
        if target in targets:
            raise invalid_argument(
                f"secret references '{targets[target]}' and '{ref_name}' have a "
                f"conflicting target: '{target}'"
            )
        targets[target] = ref_name
