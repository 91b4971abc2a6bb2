"""Who a worker process is, precisely enough to tell later whether it is still alive.

``hostname:pid`` is not enough: containers that share a hostname (docker ``--network host``, Kubernetes
``hostNetwork``) each have their own PID namespace, so one container's pid 7 says nothing about another's, and a pid
is reused after its process dies. An identity is (hostname, boot id, PID-namespace inode, pid, process start time):
a RUNNING trial is known dead only when its worker ran on this host, this boot and this PID namespace, and its pid
is gone or now belongs to a process started at another time. Anything else cannot be judged from here and is left
to the storage's heartbeat.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
from pathlib import Path
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


# A worker that stops for a reason that is not its trial's fault (the storage stayed down past --storage-retry)
# leaves a note here, keyed by its identity, for the next worker on this host that finds its trial dead: that
# re-queue does not count toward the configuration's retries. Host-local like the check that reads it (is_dead
# only judges workers of this host, boot and PID namespace); a note is a few bytes and names a process that ended.
EXIT_NOTES = Path(tempfile.gettempdir()) / "autokd-exits"


def _note_path(ident: dict[str, Any]) -> Path:
    return EXIT_NOTES / f"{ident.get('boot')}-{ident.get('pidns')}-{ident.get('pid')}-{ident.get('start')}.json"


def note_exit(reason: str) -> None:
    """Leave a note that this process stops for ``reason`` (best effort: a note that cannot be written only makes
    the re-queue count as a death)."""
    try:
        EXIT_NOTES.mkdir(parents=True, exist_ok=True)
        _note_path(identity()).write_text(json.dumps({"reason": reason}), encoding="utf-8")
    except OSError:
        pass


def exit_note(ident: Any) -> str | None:
    """The reason the dead worker ``ident`` left in its note, or None when it left none."""
    if not isinstance(ident, dict):
        return None
    try:
        return str(json.loads(_note_path(ident).read_text(encoding="utf-8"))["reason"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
