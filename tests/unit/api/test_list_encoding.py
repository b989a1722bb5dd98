"""The list endpoints encode straight from the structs (shoal/api/encode.py
json_structs_response): the same JSON as the dict path of the inspect endpoints, with
dockerd's omissions on tasks (Slot 0, Spec.Runtime)."""

from __future__ import annotations

import json

import msgspec

from shoal.api.encode import json_response, json_structs_response
from shoal.api.tasks import task_struct, task_wire
from shoal.types.task import Task

RAW = {
    "ID": "t1",
    "Version": {"Index": 12},
    "CreatedAt": "2026-12-02T07:12:22.968783538Z",
    "UpdatedAt": "2026-12-02T07:12:22.968783538Z",
    "Spec": {
        "ContainerSpec": {"Image": "busybox", "Args": ["sleep", "1d"], "Env": ["A=é"]},
        "RestartPolicy": {"Condition": "any", "Delay": 5000000000},
        "Runtime": "container",
    },
    "ServiceID": "svc",
    "Slot": 0,
    "NodeID": "node",
    "Status": {
        "Timestamp": "2026-12-02T07:12:22.968783538Z",
        "State": "running",
        "Message": "started",
    },
    "DesiredState": "running",
}


def test_tasks_encoded_from_structs_match_the_dict_path() -> None:
    t0 = msgspec.convert(RAW, Task)
    t3 = msgspec.structs.replace(t0, id="t3", slot=3)
    listed = json.loads(json_structs_response([task_struct(t0), task_struct(t3)]).body)
    assert listed == json.loads(json_response([task_wire(t0), task_wire(t3)]).body)
    assert "Slot" not in listed[0] and listed[1]["Slot"] == 3
    assert "Runtime" not in listed[0]["Spec"]
    assert listed[0]["Spec"]["ContainerSpec"]["Env"] == ["A=é"]
    assert task_struct(t3) is not t3 and task_struct(task_struct(t3)) == task_struct(t3)
