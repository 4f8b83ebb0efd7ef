# Shared by the scripts: a project virtualenv with the package installed, and a persistent DAGSTER_HOME.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${BATCHINFER_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"
stamp="$VENV/.batchinfer-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  python -m pip install --quiet --upgrade pip
  # The CPU wheel first: with it in place the project's torch range installs nothing more.
  python -m pip install --quiet "torch==2.13.0"
  python -m pip install --quiet -e '.[dev]'
  touch "$stamp"
fi
export BATCHINFER_HOME="${BATCHINFER_HOME:-$ROOT/.batchinfer}"
export DAGSTER_HOME="${DAGSTER_HOME:-$BATCHINFER_HOME/dagster}"
mkdir -p "$DAGSTER_HOME"
cp dagster.yaml "$DAGSTER_HOME/dagster.yaml"
