"""Run tags: every `batchinfer/...` tag the package sets or reads is declared once, in `tags.py`."""

from __future__ import annotations

import re
from pathlib import Path

import batchinfer_assets
from batchinfer_assets import tags


def test_every_run_tag_is_declared_in_tags_py_and_nowhere_else():
    package = Path(batchinfer_assets.__file__).parent
    literal = re.compile(r"""["']batchinfer/""")
    found = [
        f"{path.relative_to(package)}:{number}"
        for path in sorted(package.rglob("*.py"))
        if path != package / "tags.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if literal.search(line)
    ]
    assert found == [], "declare the run tag in batchinfer_assets/tags.py and import it from there"
    declared = {name: value for name, value in vars(tags).items() if name.endswith("_TAG")}
    assert declared and all(value.startswith("batchinfer/") for value in declared.values())
    assert len(set(declared.values())) == len(declared), "two constants name the same tag"
