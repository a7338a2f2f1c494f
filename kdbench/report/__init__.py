"""``kdbench report``: the store's results as figures, tables and one self-contained HTML page.

frames.py computes DataFrames from the store (pandas only), stats.py the statistics, plots.py draws
figures from frames, render.py writes HTML, Markdown, CSV and LaTeX.
"""

from __future__ import annotations

from kdbench.report.frames import StudyFrames, comparison_table, study_frames
from kdbench.report.render import Report, write_report

__all__ = ["Report", "StudyFrames", "comparison_table", "study_frames", "write_report"]
