"""A real PostgreSQL server from Debian's binaries on a temp data directory and a free loopback port."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import psycopg

from batchinfer_assets_tests.processes import free_port

SUPERUSER = "postgres"
PASSWORD = "batchinfer-test-secret"
START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 30
# postgres refuses to run as root; the Debian package creates this system user.
SERVICE_USER = "postgres"


def find_bin_dir() -> Path:
    """The newest /usr/lib/postgresql/*/bin holding initdb and pg_ctl."""
    candidates = sorted(
        (Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin") if Path(p, "initdb").exists()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if not candidates:
        raise RuntimeError(
            "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin: .ci/run installs Debian's "
            "`postgresql` package for these tests (locally: apt-get install -y postgresql)"
        )
    return candidates[-1]


@dataclass
class PostgresServer:
    """A running server; `url()` and `env()` point clients at one of its databases."""

    bin_dir: Path
    base: Path
    port: int
    host: str = "127.0.0.1"
    user: str = SUPERUSER
    password: str = PASSWORD

    @property
    def data_dir(self) -> Path:
        return self.base / "data"

    @property
    def socket_dir(self) -> Path:
        return self.base / "sock"

    def url(self, database: str, driver: str = "psycopg") -> str:
        return f"postgresql+{driver}://{self.user}:{self.password}@{self.host}:{self.port}/{database}"

    def dagster_env(self, database: str) -> dict[str, str]:
        """The variables dagster.postgres.yaml reads, pointing at `database`."""
        return {
            "DAGSTER_PG_HOST": self.host,
            "DAGSTER_PG_PORT": str(self.port),
            "DAGSTER_PG_USER": self.user,
            "DAGSTER_PG_PASSWORD": self.password,
            "DAGSTER_PG_DB": database,
        }

    def connect(self, database: str = "postgres") -> psycopg.Connection:
        return psycopg.connect(
            host=self.host, port=self.port, user=self.user, password=self.password, dbname=database, autocommit=True
        )

    def create_database(self, prefix: str) -> str:
        """A new empty database with a unique name starting with `prefix`."""
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        with self.connect() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name


def _as_service_user(command: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", SERVICE_USER, "--", *command]


def _run(command: list[str], what: str, timeout: float) -> None:
    result = subprocess.run(_as_service_user(command), capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"{what} failed ({result.returncode}): {result.stdout}\n{result.stderr}")


def start_server() -> PostgresServer:
    """initdb a temp data directory and start postgres on a free port; bounded waits throughout."""
    bin_dir = find_bin_dir()
    # Not pytest's tmp_path: its 0700 parents are closed to the service user.
    base = Path(tempfile.mkdtemp(prefix="batchinfer-pg-"))
    server = PostgresServer(bin_dir=bin_dir, base=base, port=free_port())
    server.socket_dir.mkdir()
    pwfile = base / "pwfile"
    pwfile.write_text(PASSWORD + "\n")
    if os.geteuid() == 0:
        try:
            account = pwd.getpwnam(SERVICE_USER)
        except KeyError:
            raise RuntimeError(
                f"running as root and there is no {SERVICE_USER!r} user to run postgres as: "
                ".ci/run installs Debian's `postgresql` package, which creates it"
            ) from None
        for path in (base, server.socket_dir, pwfile):
            os.chown(path, account.pw_uid, account.pw_gid)
    try:
        _run(
            [
                str(bin_dir / "initdb"), "-D", str(server.data_dir), "-U", SUPERUSER, f"--pwfile={pwfile}",
                "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync",
            ],
            "initdb",
            timeout=120,
        )
        options = f"-p {server.port} -k {server.socket_dir} -c listen_addresses={server.host} -c fsync=off"
        _run(
            [
                str(bin_dir / "pg_ctl"), "start", "-D", str(server.data_dir), "-l", str(base / "server.log"),
                "-w", "-t", str(START_TIMEOUT_S), "-o", options,
            ],
            "pg_ctl start",
            timeout=START_TIMEOUT_S + 30,
        )
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        log = base / "server.log"
        tail = log.read_text()[-3000:] if log.exists() else ""
        stop_server(server)
        raise RuntimeError(f"could not start PostgreSQL from {bin_dir}: {exc}\n{tail}") from exc
    return server


def stop_server(server: PostgresServer) -> None:
    """Stop the server (fast, then immediate) and remove its directory."""
    pg_ctl = str(server.bin_dir / "pg_ctl")
    if (server.data_dir / "postmaster.pid").exists():
        stop = [pg_ctl, "stop", "-D", str(server.data_dir), "-w", "-t", str(STOP_TIMEOUT_S)]
        try:
            _run([*stop, "-m", "fast"], "pg_ctl stop -m fast", timeout=STOP_TIMEOUT_S + 15)
        except (RuntimeError, subprocess.TimeoutExpired):
            # Sessions a test left open can hold a fast shutdown past its wait.
            _run([*stop, "-m", "immediate"], "pg_ctl stop -m immediate", timeout=STOP_TIMEOUT_S + 15)
    shutil.rmtree(server.base, ignore_errors=True)
