#!/bin/sh
# The image's install steps, shared with the test that replays them in a clean virtualenv.
#   install.sh deps   torch from $TORCH_INDEX_URL, then the project's dependencies (no source needed)
#   install.sh app    the project itself, without touching the dependency layer
set -eu
: "${TORCH_VERSION:?TORCH_VERSION is required}"
: "${TORCH_INDEX_URL:?TORCH_INDEX_URL is required}"
: "${PROJECT_EXTRAS:=deploy}"
python=${PYTHON:-python}
constraints=$(mktemp)
trap 'rm -f "$constraints" "$constraints.req"' EXIT
# Every later install must keep the torch build chosen here (CPU or CUDA).
echo "torch==${TORCH_VERSION}" >"$constraints"

case "${1:-}" in
  deps)
    "$python" -m pip install --index-url "$TORCH_INDEX_URL" "torch==${TORCH_VERSION}"
    # Dependencies straight from pyproject.toml: this layer needs no source, so code edits keep its cache.
    "$python" - "$PROJECT_EXTRAS" >"$constraints.req" <<'PY'
import sys
import tomllib

project = tomllib.load(open("pyproject.toml", "rb"))["project"]
extras = [name for name in sys.argv[1].split(",") if name]
requirements = list(project["dependencies"])
for name in extras:
    requirements += project["optional-dependencies"][name]
print("\n".join(requirements))
PY
    "$python" -m pip install -c "$constraints" -r "$constraints.req"
    ;;
  app)
    "$python" -m pip install --no-deps -c "$constraints" .
    "$python" -m pip check
    ;;
  *)
    echo "usage: install.sh deps|app" >&2
    exit 2
    ;;
esac
