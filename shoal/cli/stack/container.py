"""The parts of a service's ContainerSpec and TaskTemplate that Compose writes its own
way: volumes (mounts), ulimits, DNS, logging, capabilities. As docker/cli's
cli/compose/convert does, so both clients store one spec."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shoal.cli.stack.compose import ComposeError, ComposeFile, Mount, Service, Ulimit
from shoal.cli.stack.values import memory, str_map


def capabilities(caps: list[str]) -> list[str]:
    """`net_admin` → `CAP_NET_ADMIN` (`ALL` stays), as the CLI normalises them."""
    out = []
    for cap in caps:
        c = cap.upper()
        out.append(c if c == "ALL" or c.startswith("CAP_") else f"CAP_{c}")
    return out


def ulimits(value: dict[str, int | Ulimit], path: str) -> list[dict[str, Any]]:
    out = []
    for name in sorted(value):
        u = value[name]
        soft, hard = (u, u) if isinstance(u, int) else (u.soft, u.hard)
        if soft > hard:
            raise ComposeError(f"{path}.{name}", f"soft limit {soft} exceeds hard limit {hard}")
        out.append({"Name": name, "Hard": hard, "Soft": soft})
    return out


def _list(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def dns_config(svc: Service) -> dict[str, Any] | None:
    cfg = {
        "Nameservers": _list(svc.dns),
        "Search": _list(svc.dns_search),
    }
    cfg = {k: v for k, v in cfg.items() if v}
    return cfg or None


def log_driver(svc: Service) -> dict[str, Any] | None:
    if svc.logging is None:
        return None
    out: dict[str, Any] = {"Name": svc.logging.driver or ""}
    if svc.logging.options:
        out["Options"] = {k: "" if v is None else str(v) for k, v in svc.logging.options.items()}
    return out


def mounts(
    stack: str, svc: Service, f: ComposeFile, path: str, ns: dict[str, str]
) -> list[dict[str, Any]]:
    out = []
    for i, v in enumerate(svc.volumes or []):
        where = f"{path}[{i}]"
        m = _short(v, where) if isinstance(v, str) else v
        out.append(_mount(stack, m, f, where, ns))
    return out


def _short(text: str, path: str) -> Mount:
    """`[SOURCE:]TARGET[:ro|rw]`: a path source is a bind, a name a named volume,
    no source an anonymous volume."""
    parts = text.split(":")
    mode = None
    if len(parts) == 3 or (len(parts) == 2 and parts[1] in ("ro", "rw")):
        *parts, mode = parts
    if mode not in (None, "ro", "rw") or not 1 <= len(parts) <= 2 or not all(parts):
        raise ComposeError(path, f"invalid volume {text!r} ([SOURCE:]TARGET[:ro|rw])")
    read_only = True if mode == "ro" else None
    if len(parts) == 1:
        return Mount(type="volume", target=parts[0], read_only=read_only)
    source, target = parts
    kind = "bind" if source.startswith(("/", ".", "~")) else "volume"
    return Mount(type=kind, source=source, target=target, read_only=read_only)  # type: ignore[arg-type]


def _mount(stack: str, m: Mount, f: ComposeFile, path: str, ns: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {"Type": m.type, "Target": m.target}
    if m.read_only:
        out["ReadOnly"] = True
    if m.type == "tmpfs":
        if m.source:
            raise ComposeError(f"{path}.source", "not allowed with type tmpfs")
        if m.tmpfs is not None and m.tmpfs.size is not None:
            out["TmpfsOptions"] = {"SizeBytes": memory(m.tmpfs.size, f"{path}.tmpfs.size")}
        return out
    if m.type == "bind":
        if not m.source:
            raise ComposeError(f"{path}.source", "a bind mount needs a source")
        source = Path(m.source).expanduser()
        out["Source"] = str(source if source.is_absolute() else (f.base_dir / source).resolve())
        if m.bind is not None and m.bind.propagation:
            out["BindOptions"] = {"Propagation": m.bind.propagation}
        return out
    if not m.source:  # anonymous volume
        return out
    declared = f.volumes.get(m.source)
    if declared is None:
        raise ComposeError(f"{path}", f"volume {m.source!r} is not declared")
    if declared.external:
        out["Source"] = declared.name or m.source
        return out
    out["Source"] = declared.name or f"{stack}_{m.source}"
    options: dict[str, Any] = {"Labels": {**str_map(declared.labels, ""), **ns}}
    if m.volume is not None and m.volume.nocopy:
        options["NoCopy"] = True
    if declared.driver or declared.driver_opts:
        driver: dict[str, Any] = {"Name": declared.driver} if declared.driver else {}
        if declared.driver_opts:
            driver["Options"] = {k: str(v) for k, v in declared.driver_opts.items()}
        options["DriverConfig"] = driver
    out["VolumeOptions"] = options
    return out
