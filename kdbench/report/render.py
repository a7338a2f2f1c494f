"""Write a report: figures (PNG + SVG), tables (Markdown, CSV, LaTeX booktabs) and a self-contained index.html.

:func:`write_report` is what ``kdbench report`` calls. It reads each study (:mod:`kdbench.report.sources`),
computes its frames (:mod:`kdbench.report.frames`), draws the figures (:mod:`kdbench.report.plots`), and
writes everything under one folder; index.html embeds its PNGs as data URIs, so it opens from disk with no
network. The output is a pure function of the database: the same store gives
byte-identical tables, and figures are saved without dates (SVG ids salted with a constant).
Every string that came from a user (study names, configs, devices) is HTML-escaped by Jinja2's
autoescape, and LaTeX-escaped in the .tex tables.
"""

from __future__ import annotations

import base64
import contextlib
import io
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import matplotlib
import pandas as pd
from matplotlib.figure import Figure

from kdbench.errors import OutputError
from kdbench.provenance import kdbench_commit, library_versions
from kdbench.report import plots
from kdbench.report.frames import StudyFrames, comparison_table, compute_frames, grid_cells
from kdbench.report.sources import StoreLike, read_studies
from kdbench.report.stats import CONFIDENCE

__all__ = ["SECTIONS", "Report", "comparison_display", "default_out", "source_note", "write_report"]

SECTIONS = {  # id -> heading of each per-study section, in page order
    "grid": "Accuracy over T × α",
    "effects": "Main effects of T and α",
    "curves": "Learning curves",
    "predictions": "Predictions",
    "importances": "What mattered",
    "provenance": "Provenance",
}
FIGURE_DPI = 110  # dots per inch of the PNGs
RC: dict[str, Any] = {"svg.hashsalt": "kdbench", "svg.fonttype": "path", "font.size": 9}
FIGURES: dict[str, Callable[[StudyFrames], Figure]] = {
    "heatmap-val": plots.heatmap_val,
    "heatmap-diff": plots.heatmap_diff,
    "effects": plots.effects,
    "learning-curves": plots.learning_curves,
    "predictions": plots.predictions,
    "importances": plots.importances,
}


@dataclass
class Report:
    """What :func:`write_report` produced."""

    out: Path | None
    frames: list[StudyFrames]
    comparison: pd.DataFrame
    markdown: str
    files: list[Path] = field(default_factory=list)


def default_out(studies: list[str]) -> Path:
    """The default output folder.

    Args:
        studies: the report's study names.

    Returns:
        ``reports/<study>/``, or ``reports/<a>+<b>/`` for several studies.
    """
    return Path("reports") / "+".join(studies)


# ---------------------------------------------------------------------------------------------- tables


def _pct(x: Any, digits: int = 2, sign: bool = False) -> str:
    if x is None or pd.isna(x):
        return ""
    return f"{100 * float(x):{'+' if sign else ''}.{digits}f}"


def _num(x: Any, fmt: str) -> str:
    return "" if x is None or pd.isna(x) else format(float(x), fmt)


def comparison_display(table: pd.DataFrame) -> pd.DataFrame:
    """The comparison table as text: accuracy in %, differences in pp with their CI.

    Args:
        table: :func:`~kdbench.report.frames.comparison_table`'s rows.

    Returns:
        One text row per arm; the study column only when there are several studies.
    """
    ci = f"{CONFIDENCE:.0%} CI (pp)"
    rows = []
    for _, r in table.iterrows():
        sd = "" if pd.isna(r["test_sd"]) else f" ± {_pct(r['test_sd'])}"
        rows.append({
            "study": r["study"], "arm": r["arm"], "model": r["model"],
            "T": _num(r["temperature"], "g"), "α": _num(r["alpha"], "g"), "lr": _num(r["lr"], ".3g"),
            "test acc (%)": _pct(r["test_mean"]) + sd, "n": _num(r["n"], ".0f"),
            "KD − CE (pp)": _pct(r["diff_mean"], sign=True),
            ci: "" if pd.isna(r["ci_low"]) else f"[{_pct(r['ci_low'], sign=True)}, {_pct(r['ci_high'], sign=True)}]",
            "p (paired t)": "" if pd.isna(r["p_value"]) else (f"{r['p_value']:.2g}" if r["p_value"] >= 1e-4
                                                               else "<0.0001"),
            "parameters": _num(r["parameters"], ",.0f"), "ms/batch": _num(r["infer_ms_per_batch"], ".1f"),
            "device": r["device"]})
    out = pd.DataFrame(rows, columns=["study", "arm", "model", "T", "α", "lr", "test acc (%)", "n", "KD − CE (pp)",
                                      ci, "p (paired t)", "parameters", "ms/batch", "device"])
    return out.drop(columns=["study"]) if table["study"].nunique() <= 1 else out


def source_note(table: pd.DataFrame) -> str:
    """Where the comparison's numbers came from.

    Args:
        table: :func:`~kdbench.report.frames.comparison_table`'s rows.

    Returns:
        One sentence: per study, its config hash, finalist seeds and kdbench commits.
    """
    parts, tunings = [], []
    for study, g in table.groupby("study", sort=False):
        seeds = sorted({x for v in g.loc[g["arm"] != "teacher", "seeds"] for x in str(v).split()}, key=int)
        commits = sorted({c[:12] for v in g["commit"].dropna() for c in str(v).split("; ") if c})
        parts.append(f"{study}: config {g['config_hash'].iloc[0]}, finalist seeds {' '.join(seeds) or 'none'}, "
                     f"kdbench {', '.join(commits) or 'unknown'}")
        arms = [f"{a.split()[0]} {t}" for a, t in zip(g["arm"], g["tuning"], strict=True)
                if a != "teacher" and isinstance(t, str) and "#" not in a]
        if arms:
            tunings.append((f"{study}: " if table["study"].nunique() > 1 else "") + ", ".join(arms))
    return ("Source: " + ("; ".join(parts) if parts else "no teacher or finalists yet") + "."
            + (f" Tuning: {'; '.join(tunings)}." if tunings else ""))


def _grid_display(sf: StudyFrames) -> pd.DataFrame:
    cells = grid_cells(sf, "cell_mean").map(lambda s: s.replace("\n", ", "))
    cells.index = [f"α={a:g}" for a in cells.index]
    cells.columns = [f"T={t:g}" for t in cells.columns]
    return cells.rename_axis("val acc (%)").reset_index()


def _effects_display(sf: StudyFrames) -> pd.DataFrame:
    """The main effects as text: each level's mean and its paired effect against the grid mean, with CIs."""
    ci = f"{CONFIDENCE:.0%} CI"
    rows = [{"factor": "T" if r["factor"] == "temperature" else "α", "level": _num(r["level"], "g"),
             "n seeds": _num(r["n"], ".0f"), "val acc (%)": _pct(r["mean"]),
             f"{ci} (%)": "" if pd.isna(r["ci_low"]) else f"[{_pct(r['ci_low'])}, {_pct(r['ci_high'])}]",
             "vs grid mean (pp)": _pct(r["effect"], sign=True),
             f"{ci} (pp)": "" if pd.isna(r["effect_ci_low"]) else
             f"[{_pct(r['effect_ci_low'], sign=True)}, {_pct(r['effect_ci_high'], sign=True)}]"}
            for _, r in sf.evidence.main_effects.levels.iterrows()]
    return pd.DataFrame(rows, columns=["factor", "level", "n seeds", "val acc (%)", f"{ci} (%)",
                                       "vs grid mean (pp)", f"{ci} (pp)"])


def _markdown(df: pd.DataFrame) -> str:
    return df.to_markdown(index=False, disable_numparse=True) + "\n"


_LATEX_SPECIAL = {c: "\\" + c for c in "&%$#_{}"} | {"~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                                                       "\\": r"\textbackslash{}"}


def _latex(df: pd.DataFrame, caption: str) -> str:
    """A booktabs table; cells, headers and the caption LaTeX-escaped."""
    escaped = "".join(_LATEX_SPECIAL.get(c, c) for c in caption)
    return df.style.hide(axis="index").format(escape="latex").format_index(escape="latex", axis=1).to_latex(
        hrules=True, caption=escaped, column_format="l" * len(df.columns), position="htbp")


_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once: the process's umask, for files written through a temporary name


def _put(path: Path, data: str | bytes) -> None:
    """Write ``path`` whole: a temporary file in its folder, renamed over it. A link placed at ``path`` is
    replaced, never followed, so a report cannot overwrite a file outside its folder."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.chmod(tmp, 0o666 & ~_UMASK)  # as open() would have made it (mkstemp makes 0600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _write_table(df: pd.DataFrame, numeric: pd.DataFrame, out: Path, stem: str, caption: str) -> list[Path]:
    paths = [out / f"{stem}.md", out / f"{stem}.csv", out / f"{stem}.tex"]
    _put(paths[0], _markdown(df) + "\n" + caption + "\n")
    _put(paths[1], numeric.to_csv(index=False, float_format="%.10g", lineterminator="\n"))
    _put(paths[2], _latex(df, caption))
    return paths


# ---------------------------------------------------------------------------------------------- figures


def _save(fig: Figure, out: Path, stem: str, files: list[Path]) -> str:
    """Write ``stem``.png and .svg; return the PNG as a data URI."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=FIGURE_DPI, metadata={"Software": None})
    png = buf.getvalue()
    _put(out / f"{stem}.png", png)
    svg = io.BytesIO()
    fig.savefig(svg, format="svg", metadata={"Date": None})
    _put(out / f"{stem}.svg", svg.getvalue())
    files += [out / f"{stem}.png", out / f"{stem}.svg"]
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


# ---------------------------------------------------------------------------------------------- the report


def _writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out, prefix=".kdbench-write-test.")  # a new file: no link followed
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"--out {out}: cannot write there ({exc.strerror or exc}); pass a writable "
                          "folder with --out") from None


def write_report(storage: StoreLike, studies: list[str], out: str | Path | None = None, *, fmt: str = "html",
                 load_images: bool = True) -> Report:
    """Build the report of one or more studies.

    Args:
        storage: the open store, or the SQLAlchemy URL of the results database.
        studies: study names; several give one combined comparison table and figure.
        out: output folder (default :func:`default_out`); ignored for ``fmt="md"``.
        fmt: ``html`` writes everything; ``md`` only computes the comparison table (printed by the CLI).
        load_images: read the dataset's test split for the prediction grid.

    Raises:
        StoreError: no such database or study (the message lists the studies there).
        OutputError: ``out`` cannot be written.
    """
    if fmt not in ("html", "md"):
        raise OutputError(f"--format {fmt!r}: use html or md")
    studies = list(dict.fromkeys(studies))
    sources = read_studies(storage, studies, load_images=load_images and fmt == "html")
    frames = [compute_frames(src) for src in sources]
    table = comparison_table(frames)
    display = comparison_display(table)
    markdown = _markdown(display) + "\n" + source_note(table) + "\n"  # what --format md prints
    if fmt == "md":
        return Report(None, frames, table, markdown)

    out_dir = Path(out) if out is not None else default_out(studies)
    _writable(out_dir)
    files: list[Path] = []
    ci = f"{CONFIDENCE:.0%}"
    caption = (f"Test accuracy (mean ± sd over finalist seeds, n seeds); KD − CE paired over shared seeds with "
               f"its {ci} t interval and paired t-test p. {source_note(table)}")
    files += _write_table(display, table, out_dir, "comparison", caption)
    with matplotlib.rc_context(RC):  # type: ignore[arg-type]
        comparison_png = _save(plots.comparison(table), out_dir, "comparison", files)
        studies_ctx = []
        for sf in frames:
            prefix = "" if len(frames) == 1 else f"{sf.name}-"
            grid_stem = f"{prefix}grid"
            files += _write_table(_grid_display(sf), sf.grid, out_dir, grid_stem,
                                  f"{sf.name}: validation accuracy (%) per T × α cell: the mean over seeds at the "
                                  f"cell's best lr, its {ci} CI half-width, n seeds and that lr.")
            if sf.is_grid:
                files += _write_table(_effects_display(sf), sf.evidence.main_effects.levels, out_dir,
                                      f"{prefix}effects", f"{sf.name}: main effects of T and α on validation "
                                      f"accuracy, level means and paired effects vs the grid mean ({ci} CI).")
            figs = {key: {"uri": _save(draw(sf), out_dir, prefix + key, files), "file": prefix + key}
                    for key, draw in FIGURES.items()}
            studies_ctx.append(_study_context(sf, figs, grid_stem))
    html = _template().render(
        title=" + ".join(studies), source=source_note(table), comparison=display, comparison_png=comparison_png,
        studies=studies_ctx, sections=SECTIONS, several=len(frames) > 1,
        generator={"commit": kdbench_commit(), **library_versions()})
    _put(out_dir / "index.html", html)
    files.append(out_dir / "index.html")
    return Report(out_dir, frames, table, markdown, files)


def _study_context(sf: StudyFrames, figs: dict[str, dict[str, str]], grid_stem: str) -> dict[str, Any]:
    prov = dict(sf.provenance)
    prov["counts"] = sf.provenance["counts"].reset_index()
    p = sf.predictions
    return {
        "name": sf.name, "frames": sf, "figs": figs, "grid_stem": grid_stem, "grid": _grid_display(sf),
        "verdict": sf.verdict, "missing": sf.missing, "prov": prov,
        "importances": sf.importances, "pred_notes": p.notes, "pred_seed": p.seed,
        "evidence": sf.evidence.sentences, "effects": _effects_display(sf) if sf.is_grid else None,
        "budgets": sf.evidence.budgets, "replicates": sf.evidence.replicates, "pruner": sf.evidence.pruner,
    }


def _template() -> jinja2.Template:
    env = jinja2.Environment(loader=jinja2.PackageLoader("kdbench.report", "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    return env.get_template("index.html.j2")
