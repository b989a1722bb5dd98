"""Config and secret templates (`--template-driver golang`): the Go-template
placeholders Docker renders per task on the node.

    {{ .Service.ID }} {{ .Service.Name }} {{ .Service.Labels }}
    {{ .Task.ID }} {{ .Task.Name }} {{ .Task.Slot }}
    {{ .Node.ID }} {{ .Node.Hostname }} {{ .Node.Platform.OS }} {{ .Node.Platform.Architecture }}
    {{ env "NAME" }}  (the task's environment)   {{ secret "target" }}   {{ config "name" }}

Only these actions are understood (no pipelines, conditionals or ranges); anything else
is an error that rejects the task, as a template Go cannot parse does.
"""

from __future__ import annotations

import re
from typing import Any

_ACTION = re.compile(rb"\{\{-?\s*(.*?)\s*-?\}\}", re.S)
_CALL = re.compile(r'^(env|secret|config)\s+"([^"]*)"$')


class TemplateError(Exception):
    pass


def _field(context: dict[str, Any], path: str) -> str:
    value: Any = context
    for part in path.split(".")[1:]:
        if not isinstance(value, dict) or part not in value:
            raise TemplateError(f"can't evaluate field {part} in template")
        value = value[part]
    if isinstance(value, dict):
        return "map[" + " ".join(f"{k}:{v}" for k, v in sorted(value.items())) + "]"
    return str(value)


def render(data: bytes, context: dict[str, Any]) -> bytes:
    """`data` with every action replaced; `context` holds Service, Task, Node (dicts),
    env (dict), secrets (by name), configs (by name)."""

    def action(m: re.Match[bytes]) -> bytes:
        text = m.group(1).decode()
        if text.startswith("."):
            return _field(context, text).encode()
        call = _CALL.match(text)
        if call is None:
            raise TemplateError(f"template action {{{{{text}}}}} is not supported")
        fn, arg = call.groups()
        table = {"env": "env", "secret": "secrets", "config": "configs"}[fn]
        values = context.get(table, {})
        if fn == "env":
            return str(values.get(arg, "")).encode()
        if arg not in values:
            raise TemplateError(f"{fn} {arg} not found")
        value = values[arg]
        return value if isinstance(value, bytes) else str(value).encode()

    return _ACTION.sub(action, data)
