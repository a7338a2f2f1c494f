"""``kdbench report``: the store's results as figures, tables and one self-contained HTML page.

A report flows one way: sources.py makes every read (the store, Optuna's importances, the dataset's
test split) and returns plain data; frames.py computes the report's DataFrames from it (pandas only),
with stats.py's statistics; plots.py draws figures from the frames; render.py writes HTML (through
templates/), Markdown, CSV and LaTeX.
"""

from __future__ import annotations

from kdbench.report.frames import StudyFrames, comparison_table, study_frames
from kdbench.report.render import Report, write_report

__all__ = ["Report", "StudyFrames", "comparison_table", "study_frames", "write_report"]
