"""Secrets and configs, as Docker shapes them.

A secret's payload is never a field of `Secret`: it lives in `SecretMeta` beside it in
the store, so nothing that encodes a `Secret` (the API, events, logs) can reveal it.
A config's payload is part of its spec, as Docker returns it.
"""

from __future__ import annotations

import msgspec

from shoal.types.base import Model, Version


class Driver(Model):
    name: str | None = None
    options: dict[str, str] | None = None


class SecretSpec(Model):
    """What a client sends; `Data` (base64 on the wire) is taken out before storing."""

    name: str | None = None
    labels: dict[str, str] | None = None
    data: bytes | None = None
    driver: Driver | None = None
    templating: Driver | None = None


class Secret(Model):
    id: str = msgspec.field(name="ID")
    version: Version = Version()
    created_at: str = ""
    updated_at: str = ""
    spec: SecretSpec = SecretSpec()


class SecretMeta(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """The payload, kept beside the secret (encrypted at rest with the store)."""

    data: bytes = b""


class ConfigSpec(Model):
    name: str | None = None
    labels: dict[str, str] | None = None
    data: bytes | None = None
    templating: Driver | None = None


class Config(Model):
    id: str = msgspec.field(name="ID")
    version: Version = Version()
    created_at: str = ""
    updated_at: str = ""
    spec: ConfigSpec = ConfigSpec()


NO_SECRET_META = SecretMeta()
