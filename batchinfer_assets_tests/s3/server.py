"""moto's S3-compatible server as a real process on a free loopback port."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

from batchinfer_assets_tests.processes import free_port, stop_process_group

STARTUP_TIMEOUT = 60


@contextmanager
def running_moto_server(log: Path) -> Iterator[str]:
    """`moto_server` on 127.0.0.1 for the duration of the context; yields its endpoint URL; always stopped."""
    port = free_port()
    binary = Path(sys.executable).parent / "moto_server"
    with open(log, "w") as sink:
        proc = subprocess.Popen(
            [str(binary), "-H", "127.0.0.1", "-p", str(port)], stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"moto_server exited with {proc.returncode}: {log.read_text()[-2000:]}")
            try:
                requests.get(f"{endpoint}/moto-api/", timeout=2)
                break
            except requests.ConnectionError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not answer on {endpoint} within {STARTUP_TIMEOUT}s") from None
                time.sleep(0.2)
        yield endpoint
    finally:
        stop_process_group(proc, timeout=15)
