"""Write a report: figures (PNG + SVG), tables (Markdown, CSV, LaTeX booktabs) and a self-contained index.html.

:func:`write_report` is what ``kdbench report`` calls. It reads each study (:mod:`kdbench.report.sources`),
computes its frames (:mod:`kdbench.report.frames`), turns them into text tables
(:mod:`kdbench.report.tables`), draws the figures (:mod:`kdbench.report.plots`), and writes everything
under one folder; index.html embeds its PNGs as data URIs, so it opens from disk with no network. The
output is a pure function of the database: the same store gives byte-identical tables, and figures are
saved without dates (SVG ids salted with a constant). Every string that came from a user (study names,
configs, devices) is HTML-escaped by Jinja2's autoescape, and LaTeX-escaped in the .tex tables.
"""

from __future__ import annotations

import base64
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

from kdbench.atomic import write_atomically
from kdbench.errors import OutputError
from kdbench.provenance import kdbench_commit, library_versions
from kdbench.report import figures, plots
from kdbench.report.frames import StudyFrames, comparison_table, compute_frames
from kdbench.report.methods import arm_label
from kdbench.report.pool import Pooled, pool_display, pool_studies
from kdbench.report.sources import StoreLike, TestSplit, read_studies
from kdbench.report.stats import CONFIDENCE
from kdbench.report.tables import (
    architecture_note,
    budget_display,
    calibration_display,
    comparison_display,
    cost_display,
    effects_display,
    epoch_rho_display,
    fidelity_display,
    fidelity_sentences,
    grid_display,
    latex_table,
    markdown_table,
    methods_display,
    numeric_columns,
    per_class_display,
    source_note,
    tex_comparison,
    tex_methods,
    transfer_display,
)

__all__ = ["SECTIONS", "Report", "default_out", "write_report"]

SECTIONS = {  # id -> heading of each per-study section, in page order
    "grid": "Accuracy over T × α",
    "effects": "Main effects of T and α",
    "curves": "Learning curves",
    "predictions": "Predictions",
    "fidelity": "Fidelity and per-class change",
    "methods": "Distillation methods compared",
    "calibration": "Calibration",
    "cost": "Cost",
    "trials": "Every trial",
    "budget": "Budget: do the short trials' winners still win?",
    "importances": "What mattered",
    "provenance": "Provenance",
}
POOL_CAPTION = ("KD − CE test accuracy per study (paired over its finalist seeds: mean and its own t interval; "
                "standard errors in pool.csv) and pooled by random effects (normal and Hartung–Knapp (H–K) "
                "intervals); weight: each study's share of the pooled estimate.")
FIGURE_DPI = 110  # dots per inch of the PNGs
RC: dict[str, Any] = {"svg.hashsalt": "kdbench", "svg.fonttype": "path", "font.size": 9}
FIGURES: dict[str, Callable[[StudyFrames], Figure]] = {
    "heatmap-val": plots.heatmap_val,
    "heatmap-diff": plots.heatmap_diff,
    "effects": plots.effects,
    "learning-curves": plots.learning_curves,
    "predictions": plots.predictions,
    "importances": plots.importances,
    "calibration": figures.calibration,
    "trials": figures.trials,
    "budget": figures.budget,
}


@dataclass
class Report:
    """What :func:`write_report` produced."""

    out: Path | None
    frames: list[StudyFrames]
    comparison: pd.DataFrame
    markdown: str
    files: list[Path] = field(default_factory=list)
    pooled: Pooled | None = None  # report --pool: the studies' KD − CE pooled (random effects)


def default_out(studies: list[str]) -> Path:
    """The default output folder.

    Args:
        studies: the report's study names.

    Returns:
        ``reports/<study>/``, or ``reports/<a>+<b>/`` for several studies.
    """
    return Path("reports") / "+".join(studies)


def _put(path: Path, data: str | bytes) -> None:
    """Write ``path`` whole: a temporary file in its folder, renamed over it. A link placed at ``path`` is
    replaced, never followed, so a report cannot overwrite a file outside its folder."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    write_atomically(path, lambda tmp: tmp.write_bytes(payload))


def _write_table(df: pd.DataFrame, numeric: pd.DataFrame, out: Path, stem: str, caption: str, note: str = "",
                 tex: pd.DataFrame | None = None, tex_note: str = "") -> list[Path]:
    """``stem``.md and .tex from the text table ``df`` (or ``tex`` for the .tex, ``tex_note`` added to its
    note: what it moved out of its columns), .csv from the numbers."""
    paths = [out / f"{stem}.md", out / f"{stem}.csv", out / f"{stem}.tex"]
    _put(paths[0], markdown_table(df) + "\n" + caption + (f"\n\n{note}" if note else "") + "\n")
    _put(paths[1], numeric.to_csv(index=False, float_format="%.10g", lineterminator="\n"))
    _put(paths[2], latex_table(df if tex is None else tex, caption, " ".join(x for x in (note, tex_note) if x)))
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
                 load_images: bool = True, tests: dict[str, TestSplit] | None = None, pool: bool = False) -> Report:
    """Build the report of one or more studies.

    Args:
        storage: the open store, or the SQLAlchemy URL of the results database.
        studies: study names; several give one combined comparison table and figure.
        out: output folder (default :func:`default_out`); ignored for ``fmt="md"``.
        fmt: ``html`` writes everything; ``md`` only computes the comparison table (printed by the CLI).
        load_images: read the dataset's test split for the prediction grid.
        tests: test splits by study name, given instead of read (data held in memory, see :func:`kdbench.sweep`).
        pool: pool the studies' KD − CE into one random-effects estimate (:mod:`kdbench.report.pool`).

    Raises:
        StoreError: no such database or study (the message lists the studies there).
        OutputError: ``out`` cannot be written.
        ConfigError: ``pool`` with one study, studies of different pairs, or one without a standard error.
    """
    if fmt not in ("html", "md"):
        raise OutputError(f"--format {fmt!r}: use html or md")
    studies = list(dict.fromkeys(studies))
    sources = read_studies(storage, studies, load_images=load_images and fmt == "html", tests=tests)
    frames = [compute_frames(src) for src in sources]
    table = comparison_table(frames)
    display = comparison_display(table)
    notes = " ".join(x for x in (source_note(table), architecture_note(table)) if x)
    markdown = markdown_table(display) + "\n" + notes + "\n"  # what --format md prints
    pooled = pool_studies(frames) if pool else None  # refused (one line) before anything is written
    if pooled is not None:
        markdown += "\n" + markdown_table(pool_display(pooled)) + "\n" + pooled.sentence + "\n"
    if fmt == "md":
        return Report(None, frames, table, markdown, pooled=pooled)

    out_dir = Path(out) if out is not None else default_out(studies)
    _writable(out_dir)
    files: list[Path] = []
    ci = f"{CONFIDENCE:.0%}"
    caption = (f"Test accuracy (mean ± sd over finalist seeds, n seeds); KD − CE paired over shared seeds with "
               f"its {ci} t interval and paired t-test p (t): the test of the methods. McNemar's test (McN., 2 nets: "
               "the median p over seeds) compares the two finalist networks of one seed on the same test images, i.e. "
               "whether those two networks err on different images, not whether one method beats the other.")
    files += _write_table(display, table, out_dir, "comparison", caption, notes, tex_comparison(display))
    if pooled is not None:
        files += _write_table(pool_display(pooled), pooled.table, out_dir, "pool", POOL_CAPTION, pooled.sentence)
    with matplotlib.rc_context(RC):  # type: ignore[arg-type]
        comparison_png = _save(plots.comparison(frames), out_dir, "comparison", files)
        pool_png = _save(figures.forest(pooled.table), out_dir, "pool", files) if pooled is not None else ""
        studies_ctx = []
        for sf in frames:
            prefix = "" if len(frames) == 1 else f"{sf.name}-"
            grid_stem = f"{prefix}grid"
            files += _write_table(grid_display(sf), sf.grid, out_dir, grid_stem,
                                  f"{sf.name}: validation accuracy (%) per T × α cell: the mean over seeds at the "
                                  f"cell's best lr, its {ci} CI half-width, n seeds and that lr.")
            if sf.is_grid:
                files += _write_table(effects_display(sf), sf.evidence.main_effects.levels, out_dir,
                                      f"{prefix}effects", f"{sf.name}: main effects of T and α on validation "
                                      f"accuracy, level means and paired effects vs the grid mean ({ci} CI).")
            if len(sf.fidelity.seeds):
                files += _write_table(fidelity_display(sf), sf.fidelity.seeds, out_dir, f"{prefix}fidelity",
                                      f"{sf.name}: per finalist seed, the test images only one student got right, "
                                      "McNemar's test on them (exact binomial or χ²: do these two networks err on "
                                      "different images? a test of two networks, not of the methods), and each "
                                      "student's top-1 agreement with the teacher, from the stored test predictions.")
            if len(sf.fidelity.per_class):
                files += _write_table(per_class_display(sf), sf.fidelity.per_class, out_dir, f"{prefix}per-class",
                                      f"{sf.name}: test accuracy per class; KD − CE paired by seed, then averaged "
                                      f"over n={int(sf.fidelity.per_class['n_seeds'].iloc[0])} seeds.")
            if not sf.methods.empty:
                narrow, configurations = tex_methods(methods_display(sf))
                files += _write_table(methods_display(sf), sf.methods, out_dir, f"{prefix}methods",
                                      f"{sf.name}: each method's best configuration (chosen on validation), test "
                                      f"accuracy mean ± sd over n seeds, and its differences to CE and to Hinton's "
                                      f"KD paired by seed ({ci} t interval; p Holm-corrected over the methods).",
                                      tex=narrow, tex_note=configurations)
            if len(sf.calibration):
                files += _write_table(calibration_display(sf), sf.calibration, out_dir, f"{prefix}calibration",
                                      f"{sf.name}: expected calibration error (15 bins) and NLL on the test set, "
                                      "mean ± sd over seeds, from the stored test logits.")
            files += _write_table(cost_display(sf), sf.cost, out_dir, f"{prefix}cost",
                                  f"{sf.name}: wall-clock per arm and stage (seconds); trial × CE: one search "
                                  "trial's median over CE's.", sf.cost_note)
            files += _budget_tables(sf, out_dir, prefix)
            draws = dict(FIGURES, **({"method-cells": figures.method_cells} if not sf.methods.empty else {}))
            left_out = figures.left_out(sf)  # nothing to draw: a sentence instead of an empty figure
            draws = {key: draw for key, draw in draws.items() if key not in left_out}
            figs = {key: {"uri": _save(draw(sf), out_dir, prefix + key, files), "file": prefix + key}
                    for key, draw in draws.items()}
            studies_ctx.append(_study_context(sf, figs, left_out, grid_stem, prefix))
    html = _template().render(
        confidence=f"{CONFIDENCE:.0%}", title=" + ".join(studies), source=source_note(table),
        architectures=architecture_note(table), comparison=display, comparison_png=comparison_png,
        studies=studies_ctx, sections=SECTIONS, several=len(frames) > 1, pooled=pooled,
        pool_table=pool_display(pooled) if pooled is not None else None, pool_png=pool_png,
        generator={"commit": kdbench_commit(), **library_versions()})
    _put(out_dir / "index.html", html)
    files.append(out_dir / "index.html")
    return Report(out_dir, frames, table, markdown, files, pooled)


def _budget_tables(sf: StudyFrames, out: Path, prefix: str) -> list[Path]:
    """The budget section's tables: per-epoch rank correlation, transfer per method, best cell per budget."""
    files = []
    if len(sf.epoch_rho):
        shown = epoch_rho_display(sf)
        point = "step" if "step" in shown else "epoch"  # on student.eval_every's step grid, or epoch ends
        files += _write_table(shown, sf.epoch_rho, out, f"{prefix}epoch-rank",
                              f"{sf.name}: Spearman rho of each {point}'s validation accuracy with the final one over "
                              f"the search's complete trials ({CONFIDENCE:.0%} bootstrap CI, n trials).")
    for i, t in enumerate(sf.transfers):
        files += _write_table(transfer_display(sf, i), t.table, out, f"{prefix}transfer-{t.method}",
                              f"{sf.name}: {arm_label(t.method)} configurations at the search's budget and at the "
                              "finalists' (validation accuracy; search rank from 1).", t.sentence)
    if len(sf.budget_table):
        files += _write_table(budget_display(sf), sf.budget_table, out, f"{prefix}budget",
                              f"{sf.name}: per budget, the best KD configuration and KD - CE on validation, paired "
                              f"over seeds ({CONFIDENCE:.0%} t interval).")
    return files


def _study_context(sf: StudyFrames, figs: dict[str, dict[str, str]], left_out: dict[str, str], grid_stem: str,
                   prefix: str) -> dict[str, Any]:
    prov = dict(sf.provenance)
    prov["counts"] = sf.provenance["counts"].reset_index()
    p = sf.predictions
    return {
        "name": sf.name, "frames": sf, "figs": figs, "grid_stem": grid_stem, "grid": grid_display(sf),
        "verdict": sf.verdict, "missing": sf.missing, "prov": prov,
        "importances": sf.importances, "pred_notes": p.notes, "pred_seed": p.seed, "left_out": left_out,
        "pred_caption": _predictions_caption(sf), "trials_caption": _trials_caption(sf),
        "importances_caption": _importances_caption(sf),
        "fidelity": fidelity_display(sf), "per_class": per_class_display(sf),
        "fidelity_sentences": fidelity_sentences(sf), "fidelity_notes": sf.fidelity.notes, "prefix": prefix,
        "methods": methods_display(sf) if not sf.methods.empty else None, "method_sentence": sf.method_sentence,
        "calibration": calibration_display(sf), "calibration_note": sf.calibration_note,
        "cost": cost_display(sf), "cost_note": sf.cost_note, "dashboard": sf.dashboard,
        "evidence": sf.evidence.sentences, "effects": effects_display(sf) if sf.is_grid else None,
        "budgets": {arm_label(k): v for k, v in sf.evidence.budgets.items()},
        "replicates": sf.evidence.replicates, "pruner": sf.evidence.pruner,
        "budget": sf.budgets, "transfers": [(t, transfer_display(sf, i)) for i, t in enumerate(sf.transfers)],
        "budget_table": budget_display(sf), "epoch_rho": epoch_rho_display(sf),
        "pruner_warnings": sf.pruner_warnings,
        "on_steps": sf.config.get("student", {}).get("eval_every") is not None,  # validation on a step grid
    }


def _predictions_caption(sf: StudyFrames) -> str:
    p = sf.predictions
    if p.images is None or p.table.empty:
        return "No prediction grid: " + "; ".join(p.notes) + "."
    first = int((p.table["index"] < len(p.table) // 2).sum())
    return (f"How to read it: red text is a wrong prediction and a purple frame marks an image where the CE and KD "
            f"students of seed {p.seed} disagree. The first {first} images are the test set's first ones (a fair "
            f"sample); the other {len(p.table) - first} are the first disagreements, not a sample: CE and KD disagree "
            f"on {p.n_disagree:,} of the {p.n_test:,} test images in all.")


def _trials_caption(sf: StudyFrames) -> str:
    history = ("for each arm, the best replicate mean so far as its trials finished (line: the best mean over the "
               "configurations that have all their seeds by then, what the search selects on, the same statistic for "
               "every arm) and each trial (dots): a line still rising at the end says the search had not converged.")
    if sf.trials.empty or figures.one_evaluation(sf.trials, "run_id"):
        return (f"How to read it: {history[0].upper()}{history[1:]} No per-trial curves: one evaluation per trial "
                "(validation only after its last step), so no curve.")
    point = "step of its student.eval_every grid" if sf.config.get("student", {}).get("eval_every") is not None \
        else "epoch"
    return (f"How to read it: on the left, one line per search trial, its validation accuracy after each {point}, "
            "coloured by how it ended; a pruned trial stops where the pruner stopped it. On the right, " + history)


def _importances_caption(sf: StudyFrames) -> str:
    imp = sf.importances
    left = (f"Left: parameter importances {imp.note}." if imp.table.empty else
            f"How to read it: a longer bar means that parameter separates the best 10 % of the n={imp.n_trials} "
            "complete KD trials from the rest more.")
    scale = "a log colour scale, as lr was searched on a log scale" if "lr" in sf.log_params else "a linear scale"
    return (f"{left} Right: the lr each T × α cell chose (its best mean over seeds), on {scale}; grey: no complete "
            "trial.")


def _template() -> jinja2.Template:
    env = jinja2.Environment(loader=jinja2.PackageLoader("kdbench.report", "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.globals["numeric"] = numeric_columns  # right-align the numeric columns, as in the Markdown and LaTeX tables
    return env.get_template("index.html.j2")
