"""What a console shows when the code location loads: no warnings about features used on purpose."""

import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

# Loads the code location as every Dagster process does, makes a one-day input_snapshot Output (its
# beta data_version is raised at run time, not import time), then warns the way code could by mistake.
SCRIPT = """
import warnings
import batchinfer_assets.definitions
import dagster as dg

dg.Output(1, data_version=dg.DataVersion("content-hash"))
warnings.warn("Function `some_new_api` is currently in beta, and may change.", dg.BetaWarning)
warnings.warn("genuine deprecation in user code", DeprecationWarning)
"""


def test_loading_definitions_shows_only_warnings_nobody_chose(tmp_path: Path) -> None:
    env = {**os.environ, "BATCHINFER_HOME": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-W", "default", "-c", SCRIPT],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    dagster_warnings = [
        line
        for line in result.stderr.splitlines()
        if any(f"{category}:" in line for category in ("BetaWarning", "PreviewWarning", "SupersessionWarning"))
    ]
    assert len(dagster_warnings) == 1, result.stderr
    assert "BetaWarning: Function `some_new_api` is currently in beta" in dagster_warnings[0]
    assert "DeprecationWarning: genuine deprecation in user code" in result.stderr
