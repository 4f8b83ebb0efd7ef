"""Which process runs a run: recorded on the run so a killed worker can be told from a running one."""

from __future__ import annotations

import os
import socket


def this_worker() -> str:
    """`host/pid/start` of this process (the start time tells a reused pid from the original)."""
    return f"{socket.gethostname()}/{os.getpid()}/{process_start_ticks(os.getpid())}"


def process_start_ticks(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux /proc), "" where that cannot be read."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            # Field 22; the command name (field 2) may hold spaces, so count from the closing parenthesis.
            return stat.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def is_alive(worker: str) -> bool | None:
    """Whether the worker named by a `host/pid/start` tag still runs; None when it is on another host."""
    host, _, rest = worker.partition("/")
    pid, _, started = rest.partition("/")
    if host != socket.gethostname() or not pid.isdigit():
        return None
    return os.path.exists(f"/proc/{pid}") and process_start_ticks(int(pid)) == started
