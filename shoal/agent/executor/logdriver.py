"""A task's log driver, as the executors see it: which one (the service's, else the
cluster's TaskDefaults at the task's creation), Docker's checks of its options, and the
extra attributes (`--log-opt labels=`, `env=`, ...) and tag Docker's drivers derive
from the container. The docker runtime hands the driver to the engine; the process
runtime runs `json-file` (its log.jsonl), `gelf` (the shim sends GELF over UDP, and
keeps log.jsonl as Docker's dual logging keeps a local cache) and `none`.
"""

from __future__ import annotations

import re
from typing import Any

from shoal.agent import templates
from shoal.agent.executor import gelf
from shoal.agent.executor.base import ExecutorError
from shoal.types.meta import TaskMeta
from shoal.types.task import Task

JSON_FILE = "json-file"
GELF = "gelf"
NONE = "none"
# What the process runtime reports as its Log plugins (the scheduler's plugin filter
# reads them); `none` needs no plugin, as in SwarmKit.
PROCESS_DRIVERS = (GELF, JSON_FILE)

# Options every driver accepts (moby's builtInLogOpts), and json-file's own.
BUILTIN_OPTIONS = frozenset({"mode", "max-buffer-size"})
LOG_MODES = ("", "blocking", "non-blocking")
JSON_FILE_OPTIONS = frozenset(
    {"max-file", "max-size", "compress", "labels", "labels-regex", "env", "env-regex", "tag"}
)
DEFAULT_TAG = "{{.ID}}"
SHORT_ID_LEN = 12


def of_task(task: Task, meta: TaskMeta) -> tuple[str, dict[str, str]]:
    """(driver name, options) the task logs with; the default is json-file."""
    driver = task.spec.log_driver or meta.default_log_driver or {}
    name = str(driver.get("Name") or JSON_FILE)
    options = {str(k): str(v) for k, v in (driver.get("Options") or {}).items()}
    return name, options


def validate(name: str, options: dict[str, str], supported: tuple[str, ...]) -> None:
    """Docker's checks (moby's logger.ValidateLogOpts), for the drivers in `supported`
    (and `none`); ExecutorError with Docker's message."""
    if name == NONE:
        return
    mode = options.get("mode", "")
    if mode not in LOG_MODES:
        raise ExecutorError(f"logger: logging mode not supported: {mode}")
    if name not in supported:
        raise ExecutorError(f"logger: no log driver named '{name}' is registered")
    own = {k: v for k, v in options.items() if k not in BUILTIN_OPTIONS}
    if name == GELF:
        try:
            gelf.validate(own)
        except ValueError as e:
            raise ExecutorError(str(e)) from None
    elif name == JSON_FILE:
        for key in own:
            if key not in JSON_FILE_OPTIONS:
                raise ExecutorError(f"unknown log opt '{key}' for json-file log driver")


def attributes(
    options: dict[str, str], labels: dict[str, str], env: dict[str, str]
) -> dict[str, str]:
    """The extra attributes of every log line (moby's Info.ExtraAttributes): the
    container labels named by `labels` or matching `labels-regex`, the environment
    variables named by `env` or matching `env-regex`."""
    extra: dict[str, str] = {}
    for opt, source in (("labels", labels), ("env", env)):
        for key in filter(None, options.get(opt, "").split(",")):
            if key in source:
                extra[key] = source[key]
        pattern = options.get(f"{opt}-regex")
        if pattern:
            try:
                regex = re.compile(pattern)
            except re.error as e:
                raise ExecutorError(f"failed to compile {opt}-regex {pattern!r}: {e}") from None
            extra.update({k: v for k, v in source.items() if regex.search(k)})
    return extra


def tag(options: dict[str, str], info: dict[str, str]) -> str:
    """The `tag` option rendered as Docker's log tag template ({{.ID}}, {{.FullID}},
    {{.Name}}, {{.ImageID}}, {{.ImageFullID}}, {{.ImageName}}, {{.DaemonName}},
    {{.Command}}); `info` holds the full IDs, names and command."""
    full_image = info.get("ImageFullID", "")
    context = {
        "ID": info["FullID"][:SHORT_ID_LEN],
        "FullID": info["FullID"],
        "Name": info.get("Name", ""),
        "ImageID": full_image.removeprefix("sha256:")[:SHORT_ID_LEN],
        "ImageFullID": full_image,
        "ImageName": info.get("ImageName", ""),
        "DaemonName": "docker",
        "Command": info.get("Command", ""),
    }
    template = options.get("tag") or DEFAULT_TAG
    try:
        return templates.render(template.encode(), context).decode()
    except templates.TemplateError as e:
        raise ExecutorError(f"failed to parse log tag template: {e}") from None


def gelf_extra(
    info: dict[str, str], options: dict[str, str], attrs: dict[str, str]
) -> dict[str, Any]:
    """The `_`-prefixed fields Docker's gelf driver adds to every message."""
    extra: dict[str, Any] = {
        "_container_id": info["FullID"],
        "_container_name": info.get("Name", ""),
        "_image_id": info.get("ImageFullID", ""),
        "_image_name": info.get("ImageName", ""),
        "_command": info.get("Command", ""),
        "_tag": tag(options, info),
        "_created": info.get("Created", ""),
    }
    for key, value in attrs.items():
        extra[key if key.startswith("_") else "_" + key] = value
    return extra
