"""examples/notebook.ipynb: the Python API end to end, executed as a reader would run it (nbclient, a real kernel)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "examples" / "notebook.ipynb"


def test_the_notebook_is_stored_without_outputs() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


@pytest.mark.slow
def test_the_notebook_runs_and_writes_a_verdict_and_a_report(needs_fmnist: None, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # a kernel of this interpreter, importing this checkout, on one thread, in a folder of its own
    spec = tmp_path / "jupyter" / "kernels" / "kdbench-test"
    spec.mkdir(parents=True)
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "kdbench test", "language": "python",
        "env": {"PYTHONPATH": path, "OMP_NUM_THREADS": "1", "KDBENCH_CACHE": str(tmp_path / "cache")}}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    work = tmp_path / "work"
    work.mkdir()
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="kdbench-test", resources={"metadata": {"path": str(work)}}).execute()

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    streams = "".join(o.text for o in outputs if o.output_type == "stream")
    assert "\x1b[" not in streams  # progress as plain lines in a notebook, no terminal escape codes
    assert "[1/" in streams  # one line per finished trial
    verdict_cell = next(c for c in nb.cells if c.source.strip() == "print(result.verdict)")
    verdict = "".join(o.text for o in verdict_cell.outputs if o.output_type == "stream").strip()
    assert verdict and "\n" not in verdict
    runs = next(c for c in nb.cells if c.source.startswith("result.runs"))
    assert any("text/html" in o.get("data", {}) for o in runs.outputs)  # the DataFrame's table
    assert (work / "reports" / "notebook-demo" / "index.html").is_file()
    assert list((work / "reports" / "notebook-demo").glob("*.csv"))
    assert (work / "notebook.db").is_file() and (tmp_path / "cache" / "teachers").is_dir()
