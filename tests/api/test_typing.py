"""Type hints hold: mypy checks the whole package (0 errors; the API and the CLI annotate every
function, pyproject's [tool.mypy]) and the Python examples of docs/python-api.md against the API."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_package_and_docs_examples_type_check():
    pytest.importorskip("mypy")
    # Stable paths: mypy's incremental cache replays a module's errors under the path it first saw.
    tmp_path = ROOT / ".mypy_cache" / "docs_examples"
    tmp_path.mkdir(parents=True, exist_ok=True)
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "python-api.md").read_text(), re.S)
    assert len(blocks) >= 2, "docs/python-api.md lost its Python examples"
    examples = []
    for i, code in enumerate(blocks):
        path = tmp_path / f"python_api_example_{i}.py"
        path.write_text(code)
        examples.append(str(path))
    # control: misuse of the API must be caught, or the check above would be vacuous (e.g. names typed Any)
    wrong = tmp_path / "misuse.py"
    wrong.write_text("import us3l\n"
                     "run = us3l.train(epochs=1)\n"
                     "us3l.bench(run.checkpoint, budget_ms='fast')\n"
                     "us3l.load(run.checkpoint).slice('0.5')\n")
    cmd = [sys.executable, "-m", "mypy", "--no-error-summary", "--cache-dir", str(ROOT / ".mypy_cache"),
           "us3l", *examples, str(wrong)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    errors = [line for line in proc.stdout.splitlines() if ": error:" in line]
    assert [e for e in errors if "misuse.py:" not in e] == [], proc.stdout + proc.stderr
    assert sum("misuse.py:" in e for e in errors) == 2, proc.stdout + proc.stderr
