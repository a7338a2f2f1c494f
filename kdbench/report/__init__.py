"""``kdbench report``: the store's results as figures, tables and one self-contained HTML page.

A report flows one way: sources.py makes every read (the store, Optuna's importances, the dataset's
test split) and returns plain data; frames.py computes the report's DataFrames from it (pandas only),
with stats.py's statistics (predictions.py the prediction grid and the fidelity of the stored test
predictions); tables.py turns them into text tables (Markdown, LaTeX); plots.py draws figures from the
frames; render.py writes HTML (through templates/), Markdown, CSV and LaTeX.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kdbench.report.frames import StudyFrames, comparison_table, study_frames
    from kdbench.report.render import Report, write_report

__all__ = ["Report", "StudyFrames", "comparison_table", "study_frames", "write_report"]

# Imported on first use (PEP 562), so that a sweep's end-of-run summary (report.grid) does not load
# matplotlib, seaborn and jinja2 into every worker.
_HOME = {"Report": "render", "write_report": "render", "StudyFrames": "frames", "comparison_table": "frames",
         "study_frames": "frames"}


def __getattr__(name: str) -> Any:
    if name in _HOME:
        return getattr(importlib.import_module(f"kdbench.report.{_HOME[name]}"), name)
    raise AttributeError(f"module 'kdbench.report' has no attribute {name!r}")
