"""A real two-node Ray cluster on 127.0.0.1 for the tests: a head and a worker node, each its own `ray start --block`.

`ray stop` would stop every Ray process of the user on the machine, other sessions' included; each node here is
started in its own process group instead and stopped by killing that group.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from batchinfer_assets_tests.processes import default_signals, free_port, stop_process_group

REPO = Path(__file__).resolve().parents[2]
RAY = Path(sys.executable).with_name("ray")
# Loopback test clusters turn token authentication (on by default since Ray 2.60) off on every node and driver.
LOOPBACK_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
START_TIMEOUT_S = 120
PR_SET_PDEATHSIG = 1


@dataclass
class LoopbackRayCluster:
    """Where the cluster listens and what runs it."""

    address: str
    temp_dir: Path
    logs: Path
    env: dict[str, str]
    nodes: list[subprocess.Popen] = field(default_factory=list)

    def log_tail(self) -> str:
        """The nodes' own output, for failure messages."""
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(self.logs.glob("*.log")))


def _node_ports() -> list[str]:
    # Every port a node opens is chosen here, so two clusters (or another user's Ray) on one machine never collide.
    ports = {
        "--node-manager-port": free_port(),
        "--object-manager-port": free_port(),
        "--metrics-export-port": free_port(),
        "--dashboard-agent-listen-port": free_port(),
        "--dashboard-agent-grpc-port": free_port(),
        "--runtime-env-agent-port": free_port(),
    }
    return [item for flag, port in ports.items() for item in (flag, str(port))]


def start_cluster(
    head_cpus: int = 1, worker_cpus: int = 1, object_store_mb: int = 256, node_env: dict[str, str] | None = None
) -> LoopbackRayCluster:
    """Head plus one worker node on 127.0.0.1 (with `node_env` set on both), joined before returning; stopped by `stop_cluster`."""
    # Unix socket paths under the temp dir must stay short (about 100 characters).
    temp_dir = Path(tempfile.mkdtemp(prefix="bi-ray-", dir="/tmp"))
    logs = temp_dir / "node-logs"
    logs.mkdir()
    port = free_port()
    env = {
        **os.environ,
        **LOOPBACK_ENV,
        **(node_env or {}),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    env.pop("RAY_ADDRESS", None)
    cluster = LoopbackRayCluster(address=f"127.0.0.1:{port}", temp_dir=temp_dir, logs=logs, env=env)
    common = ["--block", "--node-ip-address", "127.0.0.1", "--temp-dir", str(temp_dir), "--disable-usage-stats"]
    common += ["--object-store-memory", str(object_store_mb * 1024 * 1024)]
    head = [str(RAY), "start", "--head", "--port", str(port), "--num-cpus", str(head_cpus), "--include-dashboard", "false"]
    head += ["--ray-client-server-port", str(free_port()), *_node_ports(), *common]
    worker = [str(RAY), "start", "--address", cluster.address, "--num-cpus", str(worker_cpus), *_node_ports(), *common]
    try:
        cluster.nodes.append(_spawn(head, env, logs / "head.log"))
        _wait_for_nodes(cluster, 1)
        cluster.nodes.append(_spawn(worker, env, logs / "worker.log"))
        _wait_for_nodes(cluster, 2)
    except BaseException:
        stop_cluster(cluster)
        raise
    return cluster


def stop_cluster(cluster: LoopbackRayCluster) -> None:
    """Stop every node's process group (workers first), then any of their descendants left, and remove the temp dir.

    Ray's worker processes start their own sessions, so killing a node's group misses them: they are found as
    descendants of the node (through its raylet) before the node is stopped.
    """
    descendants = [pid for node in cluster.nodes for pid in _descendants(node.pid)]
    for node in reversed(cluster.nodes):
        stop_process_group(node, timeout=5)
    for pid in descendants:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    shutil.rmtree(cluster.temp_dir, ignore_errors=True)


def _descendants(root: int) -> list[int]:
    """Every live descendant of a process, from /proc (the venv has no psutil)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(parent, []).append(int(entry.name))
    found, stack = [], [root]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def _node_preexec() -> None:
    """Default signal handling, and SIGTERM to the node when the test process dies without its finalizers."""
    default_signals()
    ctypes.CDLL("libc.so.6").prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _spawn(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as sink:
        return subprocess.Popen(
            command, cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_node_preexec
        )


def _wait_for_nodes(cluster: LoopbackRayCluster, count: int) -> None:
    """Poll `ray list nodes`-style through a short-lived driver until `count` nodes are alive."""
    probe = (
        "import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR', log_to_driver=False); "
        "print(sum(1 for n in ray.nodes() if n['Alive'])); ray.shutdown()"
    )
    deadline = time.monotonic() + START_TIMEOUT_S
    last = ""
    while time.monotonic() < deadline:
        if any(node.poll() is not None for node in cluster.nodes):
            raise RuntimeError(f"a Ray node exited while starting\n{cluster.log_tail()}")
        try:
            # A driver that joins before the node's raylet has registered can wait far longer than the node takes.
            done = subprocess.run(
                [sys.executable, "-c", probe, cluster.address], env=cluster.env, capture_output=True, text=True, timeout=30
            )
        except subprocess.TimeoutExpired:
            last = "probe driver timed out"
            continue
        last = (done.stdout + done.stderr).strip()
        if done.returncode == 0 and done.stdout.strip().splitlines()[-1:] == [str(count)]:
            return
        time.sleep(1)
    raise RuntimeError(f"Ray cluster at {cluster.address} did not reach {count} node(s): {last[-2000:]}\n{cluster.log_tail()}")
