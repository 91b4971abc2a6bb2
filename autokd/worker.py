"""Who a worker process is, precisely enough to tell later whether it is still alive.

``hostname:pid`` is not enough: containers that share a hostname (docker ``--network host``, Kubernetes
``hostNetwork``) each have their own PID namespace, so one container's pid 7 says nothing about another's, and a pid
is reused after its process dies. An identity is (hostname, boot id, PID-namespace inode, pid, process start time):
a RUNNING trial is known dead only when its worker ran on this host, this boot and this PID namespace, and its pid
is gone or now belongs to a process started at another time. Anything else cannot be judged from here and is left
to the storage's heartbeat.
"""

from __future__ import annotations

import os
import socket
from typing import Any


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return None


def _pid_namespace() -> int | None:
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None


def process_start(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot (``/proc/<pid>/stat`` field 22), or None when
    no such process is visible."""
    stat = _read(f"/proc/{pid}/stat")
    if stat is None:
        return None
    fields = stat.rsplit(")", 1)[-1].split()  # the command name (field 2) may hold spaces and parentheses
    return fields[19] if len(fields) > 19 else None


def identity(pid: int | None = None) -> dict[str, Any]:
    """This process's identity (JSON-able), as recorded on each trial it runs (user attribute ``worker_id``)."""
    pid = os.getpid() if pid is None else pid
    return {"host": socket.gethostname(), "boot": _read("/proc/sys/kernel/random/boot_id"),
            "pidns": _pid_namespace(), "pid": pid, "start": process_start(pid)}


def is_dead(ident: Any) -> bool | None:
    """True when the worker ``ident`` is known to be gone, False when it is alive, None when this process cannot
    tell (another host, boot or PID namespace, or an identity without them)."""
    if not isinstance(ident, dict) or not isinstance(ident.get("pid"), int):
        return None
    here = identity()
    if None in (ident.get("boot"), ident.get("pidns"), here["boot"], here["pidns"]):
        return None  # no /proc: cannot compare
    if (ident.get("host"), ident["boot"], ident["pidns"]) != (here["host"], here["boot"], here["pidns"]):
        return None
    if ident["pid"] == here["pid"]:
        return True  # this process is starting its search: no trial of ours can be running yet
    start = process_start(ident["pid"])
    return start is None or start != ident.get("start")
