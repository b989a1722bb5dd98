"""Docker's EventMessage, as dockerd 20.10 encodes it on `GET /events`.

The field names are Docker's own mix: `Type`, `Action`, `Actor` are PascalCase, `scope`,
`time` and `timeNano` are not. Attributes are encoded with sorted keys, as Go encodes a
map. dockerd's deprecated `status`, `id` and `from` appear only on container events,
which come verbatim from the engine, so they are not here.
"""

from __future__ import annotations

import msgspec

# The scope of events about swarm objects (container events from an engine are "local").
SCOPE_SWARM = "swarm"
SCOPE_LOCAL = "local"

# The types of swarm events (what `--filter type=` names for them).
SWARM_EVENT_TYPES = ("service", "node", "secret", "config", "network")


class EventActor(msgspec.Struct, frozen=True, gc=False):
    id: str = msgspec.field(name="ID")
    attributes: dict[str, str] = msgspec.field(name="Attributes")


class EventMessage(msgspec.Struct, frozen=True, gc=False):
    type: str = msgspec.field(name="Type")
    action: str = msgspec.field(name="Action")
    actor: EventActor = msgspec.field(name="Actor")
    scope: str
    time: int
    time_nano: int = msgspec.field(name="timeNano")
