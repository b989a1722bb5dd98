"""A task's log driver as the executors see it: which one, Docker's checks of its
options and messages, the extra attributes and the tag, and how `details` frames them."""

from __future__ import annotations

import struct

import pytest

from shoal.agent.executor import logdriver
from shoal.agent.executor.base import ExecutorError
from shoal.agent.executor.docker import _parse_attrs
from shoal.api.logs import frame
from shoal.types.agent import LogMessage
from shoal.types.meta import NO_TASK_META, TaskMeta
from shoal.types.service import TaskSpec
from shoal.types.task import Task, TaskStatus

DRIVERS = logdriver.PROCESS_DRIVERS


def task(log_driver: dict[str, object] | None = None) -> Task:
    return Task(
        id="t" * 25,
        spec=TaskSpec(log_driver=log_driver),
        service_id="s1",
        node_id="n1",
        status=TaskStatus(timestamp="", state="running", message=""),
        desired_state="running",
    )


def test_the_service_driver_wins_over_the_cluster_default() -> None:
    meta = TaskMeta(default_log_driver={"Name": "gelf", "Options": {"gelf-address": "udp://h:1"}})
    assert logdriver.of_task(task(), NO_TASK_META) == ("json-file", {})
    assert logdriver.of_task(task(), meta) == ("gelf", {"gelf-address": "udp://h:1"})
    own = task({"Name": "none"})
    assert logdriver.of_task(own, meta) == ("none", {})


@pytest.mark.parametrize(
    ("name", "options", "error"),
    [
        ("syslog", {}, "logger: no log driver named 'syslog' is registered"),
        ("json-file", {"mode": "fast"}, "logger: logging mode not supported: fast"),
        ("json-file", {"gelf-address": "x"}, "unknown log opt 'gelf-address' for json-file"),
        ("gelf", {}, "gelf-address is a required parameter"),
    ],
)
def test_unsupported_drivers_and_options_are_refused_with_dockers_words(
    name: str, options: dict[str, str], error: str
) -> None:
    with pytest.raises(ExecutorError, match=error):
        logdriver.validate(name, options, DRIVERS)


def test_supported_drivers_pass() -> None:
    logdriver.validate("none", {"anything": "x"}, DRIVERS)
    logdriver.validate("json-file", {"max-size": "1m", "mode": "non-blocking", "env": "A"}, DRIVERS)
    logdriver.validate("gelf", {"gelf-address": "udp://127.0.0.1:1", "tag": "x"}, DRIVERS)


def test_attributes_pick_labels_and_env_by_name_and_by_regex() -> None:
    labels = {"app": "web", "tier": "front", "other": "x"}
    env = {"A": "1", "B": "2", "LOG_LEVEL": "debug", "PATH": "/bin"}
    options = {"labels": "app,missing", "env": "A", "env-regex": "^LOG_"}
    assert logdriver.attributes(options, labels, env) == {
        "app": "web",
        "A": "1",
        "LOG_LEVEL": "debug",
    }
    assert logdriver.attributes({"labels-regex": "ie"}, labels, env) == {"tier": "front"}


def test_the_tag_is_dockers_template() -> None:
    info = {"FullID": "abcdefghijklmnopq", "Name": "web.1.x", "ImageName": "busybox"}
    assert logdriver.tag({}, info) == "abcdefghijkl"
    assert logdriver.tag({"tag": "{{.ImageName}}/{{.Name}}"}, info) == "busybox/web.1.x"
    with pytest.raises(ExecutorError, match="log tag"):
        logdriver.tag({"tag": "{{.Nope}}"}, info)


def test_gelf_extra_has_dockers_fields_and_prefixed_attributes() -> None:
    info = {"FullID": "abcdefghijklmnopq", "Name": "web.1.x", "Command": "sh -c x"}
    extra = logdriver.gelf_extra(info, {}, {"A": "1", "_b": "2"})
    assert extra["_container_id"] == "abcdefghijklmnopq"
    assert extra["_container_name"] == "web.1.x"
    assert extra["_command"] == "sh -c x"
    assert extra["_tag"] == "abcdefghijkl"
    assert {"_image_id", "_image_name", "_created"} <= extra.keys()
    assert extra["_A"] == "1" and extra["_b"] == "2"


def test_details_put_the_attributes_beside_the_swarm_context_sorted_and_escaped() -> None:
    m = LogMessage(task_id="t", timestamp_ns=0, stream=1, data=b"hi\n", attrs={"Z": "a b,c"})
    raw = frame(task(), m, timestamps=False, details=True)
    stream, size = struct.unpack(">BxxxI", raw[:8])
    assert stream == 1 and size == len(raw) - 8
    assert raw[8:] == (
        b"Z=a+b%2Cc,com.docker.swarm.node.id=n1,com.docker.swarm.service.id=s1,"
        b"com.docker.swarm.task.id=" + b"t" * 25 + b" hi\n"
    )


def test_the_engines_details_are_parsed_back() -> None:
    assert _parse_attrs(b"Z=a+b%2Cc,k=v") == {"Z": "a b,c", "k": "v"}
    assert _parse_attrs(b"") is None
