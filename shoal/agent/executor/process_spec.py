"""What spec.json tells the shim for one process task: the service's command, args,
working directory, user, environment (Swarm's placeholders expanded), hostname and
limits, checked so that a task that can never run fails before its shim starts."""

from __future__ import annotations

import os
import platform
import shutil
import signal
from typing import TYPE_CHECKING, Any

from shoal.agent.executor.base import ExecutorError
from shoal.agent.executor.process_limits import cgroup_plan
from shoal.agent.executor.process_user import resolve_user
from shoal.agent.network import taskfiles
from shoal.agent.templates import TemplateError, render
from shoal.types.meta import TaskMeta
from shoal.types.service import ContainerSpec
from shoal.types.task import Task

if TYPE_CHECKING:
    from shoal.agent.executor.process import ProcessExecutor

# The environment every task starts from (Docker's default PATH for Linux containers).
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_WORKDIR = "/"
DEFAULT_STOP_SIGNAL = signal.SIGTERM

NO_COMMAND_ERROR = (
    "no command given: the process runtime runs the service's command and args "
    "and this service has none"
)


class LaunchSpec:
    """Builds one task's spec.json (`build`) and what else is derived from its service's
    spec: its hostname and what its templates may name."""

    def __init__(self, executor: ProcessExecutor, task: Task, meta: TaskMeta) -> None:
        self.executor = executor
        self.task = task
        self.task_id = task.id
        self.meta = meta
        self.spec = task.spec.container_spec or ContainerSpec()

    def build(self) -> dict[str, Any]:
        """What spec.json tells the shim; ExecutorError when the task can never run."""
        spec = self.spec
        argv = [*(spec.command or []), *(spec.args or [])]
        if not argv:
            raise ExecutorError(NO_COMMAND_ERROR)
        parse_signal(spec.stop_signal)
        cwd = spec.dir or DEFAULT_WORKDIR
        if not os.path.isabs(cwd):
            raise ExecutorError(
                f"the working directory '{cwd}' is invalid, it needs to be an absolute path"
            )
        if not os.path.isdir(cwd):
            raise ExecutorError(f"working directory {cwd} does not exist on this node")
        uid, gid, groups, home = resolve_user(spec.user, spec.groups)
        user_env: dict[str, str] = {}
        for entry in spec.env or []:
            key, sep, value = entry.partition("=")
            if sep and key:
                user_env[key] = value
        # Swarm expands its placeholders ({{.Task.ID}}, {{.Node.Hostname}}...) in
        # the environment's values, as in the hostname.
        context = self.template_context({"env": dict(user_env)})
        for key, value in user_env.items():
            if "{{" in value:
                try:
                    user_env[key] = render(value.encode(), context).decode()
                except TemplateError as e:
                    raise ExecutorError(f"env {key}: {e}") from e
        hostname = self.hostname(user_env)
        env = {"PATH": DEFAULT_PATH, "HOSTNAME": hostname, "HOME": home, **user_env}
        check_executable(argv[0], env["PATH"], cwd)
        return {
            "argv": argv,
            "env": env,
            "cwd": cwd,
            "uid": uid,
            "gid": gid,
            "groups": groups,
            "no_new_privs": True,
            "pid_namespace": self.executor.pid_namespace,
            "cgroups": cgroup_plan(self.executor.cgroup_layout, self.task),
        }

    def hostname(self, env: dict[str, str]) -> str:
        """The task's hostname: the spec's, its templates rendered; else the node's for a
        task sharing the node's network, or (own namespace) the task ID's first 12."""
        if self.spec.hostname:
            try:
                rendered = render(self.spec.hostname.encode(), self.template_context({"env": env}))
            except TemplateError as e:
                raise ExecutorError(f"hostname: {e}") from e
            return rendered.decode()
        if self.task.networks_attachments and self.executor.plumbing is not None:
            return taskfiles.default_hostname(self.task_id)
        return self.executor.hostname

    def template_context(self, launch: dict[str, Any]) -> dict[str, Any]:
        """What config templates may name about this task (shoal/agent/templates.py)."""
        t = self.task
        name = self.meta.service_name
        ex = self.executor
        return {
            "Service": {"ID": t.service_id, "Name": name, "Labels": {}},
            "Task": {
                "ID": t.id,
                "Name": f"{name}.{t.slot if t.slot is not None else t.node_id}.{t.id}",
                "Slot": t.slot if t.slot is not None else "",
            },
            "Node": {
                "ID": t.node_id or "",
                "Hostname": ex.hostname,
                "Platform": {"OS": "linux", "Architecture": platform.machine()},
            },
            "env": launch["env"],
        }


def parse_signal(value: str | None) -> signal.Signals:
    """A stop signal as Docker accepts it: "SIGTERM", "TERM" or "15"."""
    if not value:
        return DEFAULT_STOP_SIGNAL
    name = value.strip().upper()
    try:
        if name.isdigit():
            return signal.Signals(int(name))
        return signal.Signals[name if name.startswith("SIG") else "SIG" + name]
    except (KeyError, ValueError):
        raise ExecutorError(f"invalid stop signal: {value}") from None


def check_executable(name: str, path: str, cwd: str) -> None:
    """ExecutorError unless `name` can be exec'd, looked up in `path` as execvp does."""
    if "/" in name:
        full = os.path.join(cwd, name)
        if not os.path.exists(full):
            raise ExecutorError(f"exec {name}: no such file or directory")
        if os.path.isdir(full) or not os.access(full, os.X_OK):
            raise ExecutorError(f"exec {name}: permission denied")
    elif shutil.which(name, path=path) is None:
        raise ExecutorError(f"executable file not found in $PATH: {name}")
