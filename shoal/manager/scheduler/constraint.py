"""Placement constraints: `key==value` / `key!=value`, as SwarmKit parses and matches them.

Keys: node.id, node.hostname, node.ip, node.role, node.platform.os,
node.platform.arch, node.labels.<k>, engine.labels.<k>. Values compare
case-insensitively; several constraints must all hold.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from shoal.types.node import Node

EQ = "=="
NE = "!="
_OPERATORS = (EQ, NE)
_KEY_RE = re.compile(r"^(?i:[a-z_][a-z0-9\-_.]+)$")
_VALUE_RE = re.compile(r"^(?i:[a-z0-9:\-_\s\.\*\(\)\?\+\[\]\\\^\$\|\/]+)$")

ERR_OPERATOR = "constraint expected one operator from ==, !="


class ConstraintError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Constraint:
    key: str
    operator: str
    value: str
    # derived once, for the scheduler's hot loop
    value_lower: str = field(init=False, compare=False)
    known: bool = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "value_lower", self.value.lower())
        object.__setattr__(self, "known", known_key(self.key))

    def matches_value(self, actual: str | None) -> bool:
        if self.key.lower() == "node.ip" and actual is not None:
            if not _valid_ip_expr(self.value):
                return False
            equal = _ip_matches(self.value, actual)
        else:
            equal = actual is not None and actual.lower() == self.value_lower
        return equal if self.operator == EQ else not equal

    def matches(self, node: Node) -> bool:
        if not self.known:
            return False  # SwarmKit: an unknown key matches no node, whatever the operator
        return self.matches_value(node_value(node, self.key))


def _ip_matches(expected: str, actual: str) -> bool:
    try:
        addr = ipaddress.ip_address(actual.split(":")[0])
        if "/" in expected:
            return addr in ipaddress.ip_network(expected, strict=False)
        return addr == ipaddress.ip_address(expected)
    except ValueError:
        return False


def _valid_ip_expr(expected: str) -> bool:
    try:
        if "/" in expected:
            ipaddress.ip_network(expected, strict=False)
        else:
            ipaddress.ip_address(expected)
    except ValueError:
        return False
    return True


_KEYS = frozenset(
    {"node.id", "node.hostname", "node.ip", "node.role", "node.platform.os", "node.platform.arch"}
)
_LABEL_PREFIXES = ("node.labels.", "engine.labels.")


def known_key(key: str) -> bool:
    k = key.lower()
    return k in _KEYS or any(k.startswith(p) and len(k) > len(p) for p in _LABEL_PREFIXES)


def parse(expressions: list[str]) -> list[Constraint]:
    """Parse constraint expressions; raises ConstraintError with SwarmKit's messages."""
    out = []
    for expr in expressions:
        found = None
        for op in _OPERATORS:
            if op in expr:
                key, _, value = expr.partition(op)
                found = (op, key.strip(), value.strip())
                break
        if found is None:
            raise ConstraintError(ERR_OPERATOR)
        op, key, value = found
        if not key or not _KEY_RE.match(key):
            raise ConstraintError(f"key '{key}' is invalid")
        if not value or not _VALUE_RE.match(value):
            raise ConstraintError(f"value '{value}' is invalid")
        out.append(Constraint(key, op, value))
    return out


def node_value(node: Node, key: str) -> str | None:
    k = key.lower()
    desc = node.description
    if k == "node.id":
        return node.id
    if k == "node.hostname":
        return desc.hostname
    if k == "node.ip":
        return node.status.addr
    if k == "node.role":
        return node.spec.role
    if k == "node.platform.os":
        return desc.platform.os
    if k == "node.platform.arch":
        return desc.platform.architecture
    # the prefix compares case-insensitively, the label name as given
    if k.startswith("node.labels."):
        return (node.spec.labels or {}).get(key[len("node.labels.") :])
    if k.startswith("engine.labels."):
        return (desc.engine.labels or {}).get(key[len("engine.labels.") :])
    return None


def matches_all(constraints: list[Constraint], node: Node) -> bool:
    return all(c.matches(node) for c in constraints)
