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
import re
import tempfile
import textwrap
import unicodedata
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

__all__ = ["SECTIONS", "Report", "architecture_note", "comparison_display", "default_out", "fidelity_sentences",
           "source_note", "write_report"]

SECTIONS = {  # id -> heading of each per-study section, in page order
    "grid": "Accuracy over T × α",
    "effects": "Main effects of T and α",
    "curves": "Learning curves",
    "predictions": "Predictions",
    "fidelity": "Fidelity and per-class change",
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

    Parameters, inference time and devices are per architecture, not per arm: :func:`architecture_note`
    says them once, beside the table.

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
            "p (paired t)": _p(r["p_value"]), "p (McNemar)": _p(r["mcnemar_p"])})
    out = pd.DataFrame(rows, columns=["study", "arm", "model", "T", "α", "lr", "test acc (%)", "n", "KD − CE (pp)",
                                      ci, "p (paired t)", "p (McNemar)"])
    return out.drop(columns=["study"]) if table["study"].nunique() <= 1 else out


def _p(p: Any) -> str:
    if p is None or pd.isna(p):
        return ""
    return f"{p:.2g}" if p >= 1e-4 else "<0.0001"


def architecture_note(table: pd.DataFrame) -> str:
    """Parameters, inference time and device of each architecture in the comparison, said once.

    Args:
        table: :func:`~kdbench.report.frames.comparison_table`'s rows.

    Returns:
        One sentence per study ("" when the table is empty). The student's time is the median over all its
        finalist runs, CE and KD alike: the same architecture, so one number.
    """
    parts = []
    for study, g in table.groupby("study", sort=False):
        models = []
        for (role, model), a in g.groupby([g["arm"].eq("teacher").map({True: "teacher", False: "student"}),
                                           "model"], sort=False):
            ms = a["infer_ms_per_batch"].dropna()
            timing = f", {float(ms.iloc[0]):.1f} ms per batch of 256" if len(ms) else ""
            models.append(f"{role} {model}: {_num(a['parameters'].iloc[0], ',.0f') or '?'} parameters{timing}")
        devices = sorted({d for v in g["device"].dropna() for d in str(v).split("; ") if d})
        parts.append((f"{study}: " if table["study"].nunique() > 1 else "") + "; ".join(models)
                     + f" (device: {'; '.join(devices) or 'unknown'})")
    if not parts:
        return ""
    return ("Architectures: " + ". ".join(parts) + ". Inference time: median of 10 eval-mode forward passes of "
            "a 256-image batch; a student's is the median over all its finalist runs, CE and KD alike.")


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
    cells = grid_cells(sf, "cell_mean")
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


_NUMERIC_CELL = re.compile(r"^[\[(<]?[+\-−±]?\d")  # a cell that starts as a number does ("[-0.04, …]", "<0.0001")


def _numeric(df: pd.DataFrame) -> list[bool]:
    """Per column: do its non-empty cells read as numbers? (those columns are right-aligned)"""
    out = []
    for c in df.columns:
        cells = [str(v) for v in df[c] if str(v).strip()]
        out.append(bool(cells) and sum(bool(_NUMERIC_CELL.match(v)) for v in cells) * 2 >= len(cells))
    return out


def _fidelity_display(sf: StudyFrames) -> pd.DataFrame:
    """Per seed: the test images only one student got right, McNemar's test on them, teacher agreement."""
    rows = [{"seed": str(int(r["seed"])), "only CE right": _num(r["ce_only"], ",.0f"),
             "only KD right": _num(r["kd_only"], ",.0f"),
             "p (McNemar)": _p(r["mcnemar_p"]) + ("" if r["mcnemar_exact"] is None else
                                                  " exact" if r["mcnemar_exact"] else " χ²"),
             "CE agrees with teacher (%)": _pct(r["ce_agree"]), "KD agrees with teacher (%)": _pct(r["kd_agree"])}
            for _, r in sf.fidelity.seeds.iterrows()]
    return pd.DataFrame(rows, columns=["seed", "only CE right", "only KD right", "p (McNemar)",
                                       "CE agrees with teacher (%)", "KD agrees with teacher (%)"])


def _per_class_display(sf: StudyFrames) -> pd.DataFrame:
    pc = sf.fidelity.per_class
    rows = [{"class": str(r["name"]), "test images": _num(r["n_images"], ",.0f"),
             "CE acc (%)": _pct(r["ce_acc"]), "KD acc (%)": _pct(r["kd_acc"]),
             "KD − CE (pp)": _pct(r["delta"], sign=True)} for _, r in pc.iterrows()]
    return pd.DataFrame(rows, columns=["class", "test images", "CE acc (%)", "KD acc (%)", "KD − CE (pp)"])


def fidelity_sentences(sf: StudyFrames) -> list[str]:
    """The fidelity section's findings in words: teacher agreement of each student (mean over seeds, n), and the
    classes whose accuracy KD moved most.

    Args:
        sf: the study's frames.

    Returns:
        Sentences; none when there is nothing to say (the notes say what is missing).
    """
    out = []
    s = sf.fidelity.seeds
    teacher = sf.provenance["teacher"]
    if len(s) and s["ce_agree"].notna().any():
        parts = []
        for arm in ("ce", "kd"):
            v = s[f"{arm}_agree"].dropna()
            sd = f", sd {_pct(v.std(ddof=1))}" if len(v) > 1 else ""
            parts.append(f"{arm.upper()} students {_pct(v.mean())} % (mean over n={len(v)} seeds{sd})")
        out.append(f"Top-1 agreement with the teacher ({teacher['model'] if teacher else '?'}) on the test set: "
                   + "; ".join(parts) + ".")
    pc = sf.fidelity.per_class.dropna(subset=["delta"]) if len(sf.fidelity.per_class) else pd.DataFrame()
    if len(pc):
        top = pc.reindex(pc["delta"].abs().sort_values(ascending=False).index).head(3)
        moved = ", ".join(f"{r['name']} {_pct(r['delta'], sign=True)} pp" for _, r in top.iterrows())
        out.append(f"Classes KD moved most (KD − CE accuracy, paired by seed, mean over n={int(pc['n_seeds'].iloc[0])} "
                   f"seeds): {moved}.")
    return out


def _markdown(df: pd.DataFrame) -> str:
    """A pipe table, numeric columns right-aligned; a cell's lines joined by ", "."""
    cells = df.astype(str).map(lambda v: v.replace("\n", ", "))
    align = ["right" if n else "left" for n in _numeric(df)]
    return cells.to_markdown(index=False, disable_numparse=True, colalign=align) + "\n"


# LaTeX: pdflatex reads ASCII only (a default article has no Unicode font set up), so every symbol the report
# prints becomes math mode, and numbers are typeset in math (a true minus sign, "{,}" thousands separators).
_LATEX_SPECIAL = {c: "\\" + c for c in "&%$#_{}"} | {"~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                                                       "\\": r"\textbackslash{}"}
_LATEX_MATH = {"α": r"\alpha", "β": r"\beta", "Δ": r"\Delta", "−": "-", "±": r"\pm", "×": r"\times",
               "≠": r"\neq", "≤": r"\leq", "≥": r"\geq", "·": r"\cdot", "²": "^2", "⁻": "^-", "¹": "^1",
               "³": "^3", "→": r"\to", "≈": r"\approx", "μ": r"\mu", "χ": r"\chi",
               "<": "<", ">": ">", "|": r"\vert"}  # the ASCII three print as other glyphs in text mode
TEX_HEADER_CHARS = 10  # a .tex header's lines are wrapped at this many characters
TEX_TABCOLSEP = r"\setlength{\tabcolsep}{4pt}"  # LaTeX's 6pt each side leaves a 10-column table no room
_LATEX_OPERATORS = "−±×≠≤≥·→≈<>|"
_LATEX_TEXT = {"—": "---", "–": "--", "…": r"\dots{}", "’": "'", "‘": "`", "“": "``", "”": "''", "\u00a0": "~"}
_LATEX_TOKEN = re.compile(r"(?P<num>(?<![\w.+\-−])[−+-]?\d+(?:[.,]\d+)*(?:e[−+-]?\d+)?)|(?P<sym>["
                          + re.escape("".join(_LATEX_MATH)) + r"])|(?P<var>(?<![\w\\])T(?!\w))|(?P<other>.)", re.S)


def _tex(text: str) -> str:
    r"""``text`` as pdflatex-safe LaTeX: specials escaped, numbers, T and symbols in math mode, ASCII only.

    Adjacent math pieces (separated by nothing but spaces or "=") share one ``$…$``: ``84.07 ± 0.48`` becomes
    ``$84.07 \pm 0.48$``. A character with no LaTeX spelling here falls back to its ASCII decomposition, or "?".
    """
    pieces: list[tuple[str, str]] = []  # (kind, LaTeX): "text", or in math mode "num", "op" or "var" (T, α)
    for m in _LATEX_TOKEN.finditer(text):
        if m.group("num") is not None:
            pieces.append(("num", m.group("num").replace("−", "-").replace(",", "{,}")))
        elif m.group("sym") is not None:
            sym = m.group("sym")
            pieces.append(("op" if sym in _LATEX_OPERATORS else "var", _LATEX_MATH[sym] + " "))
        elif m.group("var") is not None:
            pieces.append(("var", "T"))
        else:
            c = m.group("other")
            if c in _LATEX_SPECIAL:
                pieces.append(("text", _LATEX_SPECIAL[c]))
            elif c in _LATEX_TEXT or c.isascii():
                pieces.append(("text", _LATEX_TEXT.get(c, c)))
            else:
                ascii_ = unicodedata.normalize("NFKD", c).encode("ascii", "ignore").decode("ascii")
                pieces.append(("text", "".join(_LATEX_SPECIAL.get(x, x) for x in ascii_) or "?"))
    out: list[str] = []
    math: str | None = None  # the math run being built
    last = ""  # the kind of its last piece
    glue: list[str] = []  # spaces and "=" after it, kept if more math follows
    for kind, piece in pieces:
        # only an operator joins across a space ("84.07 ± 0.48"): math mode would drop the space of "seeds 1 2"
        joins = math is not None and (kind == "op" or last == "op" or " " not in glue)
        if kind != "text" and joins:
            math = f"{math}{''.join(glue)}{piece}"
        elif kind != "text":
            if math is not None:
                out.append(_math(math))
            out += glue
            math = piece
        elif math is not None and piece in (" ", "="):
            glue.append(piece)
            continue
        else:
            if math is not None:
                out.append(_math(math))
                math = None
            out += [*glue, piece]
        glue = []
        last = kind
    if math is not None:
        out.append(_math(math))
    tex = "".join(out + glue)
    return "{}" + tex if tex.startswith("[") else tex  # after \\ a "[" would open an optional argument


def _math(latex: str) -> str:
    return "$" + re.sub(" +", " ", latex).strip() + "$"


def _tex_lines(text: str, align: str, where: str = "t") -> str:
    """A cell of several lines (split at newlines) as a nested tabular, aligned like its column."""
    lines = [_tex(x) for x in text.split("\n")]
    if len(lines) == 1:
        return lines[0]
    return f"\\begin{{tabular}}[{where}]{{@{{}}{align}@{{}}}}" + r" \\ ".join(lines) + r"\end{tabular}"


def _header_lines(name: str) -> str:
    """A header over several short lines, its unit on the last ("test acc (%)" over two lines), so that a column
    is as wide as its numbers, not its header."""
    parts = re.split(r" (?=[(\[])", name)
    return "\n".join(line for part in parts for line in textwrap.wrap(part, TEX_HEADER_CHARS, break_long_words=False))


def _latex(df: pd.DataFrame, caption: str, note: str = "") -> str:
    """A booktabs table for a default article page: ASCII only (see :func:`_tex`), numeric columns right-aligned,
    units under the headers, a cell's lines stacked, and provenance in a footnote-sized note below the table.
    A ``study`` column becomes a spanning row above each study's rows (a study's name can be long)."""
    df = df.reset_index(drop=True)
    group = df.pop("study") if "study" in df.columns else None
    align = ["r" if n else "l" for n in _numeric(df)]
    head = " & ".join(_tex_lines(_header_lines(str(c)), a, "b") for c, a in zip(df.columns, align, strict=True))
    body = []
    for i, row in enumerate(df.itertuples(index=False)):
        if group is not None and (i == 0 or group.iloc[i] != group.iloc[i - 1]):
            span = f"\\multicolumn{{{len(df.columns)}}}{{l}}{{\\emph{{{_tex(str(group.iloc[i]))}}}}}"
            body += ([r"\addlinespace"] if i else []) + [span + r" \\"]
        body.append(" & ".join(_tex_lines(str(v), a) for v, a in zip(row, align, strict=True)) + r" \\")
    lines = [r"\begin{table}[htbp]", r"\centering", f"\\caption{{{_tex(caption)}}}", TEX_TABCOLSEP,
             f"\\begin{{tabular}}{{{''.join(align)}}}", r"\toprule", head + r" \\", r"\midrule", *body,
             r"\bottomrule", r"\end{tabular}"]
    if note:
        lines += [r"\par\smallskip", f"{{\\footnotesize {_tex(note)}\\par}}"]
    return "\n".join([*lines, r"\end{table}"]) + "\n"


def _tex_comparison(display: pd.DataFrame) -> pd.DataFrame:
    """The comparison narrowed for a page: the models are in the note, and the difference sits over its CI."""
    ci = next(c for c in display.columns if "CI" in c)
    out = display.drop(columns=["model", ci])
    out["arm"] = out["arm"].str.replace(" student", "")  # "CE", "KD", "KD #2": the note names the models
    out["KD − CE (pp)"] = [f"{d}\n{c}" if c else d for d, c in zip(display["KD − CE (pp)"], display[ci], strict=True)]
    return out.rename(columns={"KD − CE (pp)": f"KD − CE (pp) [{ci.split(' (')[0]}]", "p (paired t)": "p (t)",
                               "p (McNemar)": "p (McN.)"})


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


def _write_table(df: pd.DataFrame, numeric: pd.DataFrame, out: Path, stem: str, caption: str, note: str = "",
                 tex: pd.DataFrame | None = None) -> list[Path]:
    """``stem``.md and .tex from the text table ``df`` (or ``tex`` for the .tex), .csv from the numbers."""
    paths = [out / f"{stem}.md", out / f"{stem}.csv", out / f"{stem}.tex"]
    _put(paths[0], _markdown(df) + "\n" + caption + (f"\n\n{note}" if note else "") + "\n")
    _put(paths[1], numeric.to_csv(index=False, float_format="%.10g", lineterminator="\n"))
    _put(paths[2], _latex(df if tex is None else tex, caption, note))
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
    notes = " ".join(x for x in (source_note(table), architecture_note(table)) if x)
    markdown = _markdown(display) + "\n" + notes + "\n"  # what --format md prints
    if fmt == "md":
        return Report(None, frames, table, markdown)

    out_dir = Path(out) if out is not None else default_out(studies)
    _writable(out_dir)
    files: list[Path] = []
    ci = f"{CONFIDENCE:.0%}"
    caption = (f"Test accuracy (mean ± sd over finalist seeds, n seeds); KD − CE paired over shared seeds with "
               f"its {ci} t interval and paired t-test p (t); McNemar's test of KD against CE on each seed's test "
               "images, the median p over seeds (McN.).")
    files += _write_table(display, table, out_dir, "comparison", caption, notes, _tex_comparison(display))
    with matplotlib.rc_context(RC):  # type: ignore[arg-type]
        comparison_png = _save(plots.comparison(frames), out_dir, "comparison", files)
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
            if len(sf.fidelity.seeds):
                files += _write_table(_fidelity_display(sf), sf.fidelity.seeds, out_dir, f"{prefix}fidelity",
                                      f"{sf.name}: per finalist seed, the test images only one student got right, "
                                      "McNemar's test on them (exact binomial or χ²), and each student's top-1 "
                                      "agreement with the teacher, from the stored test predictions.")
            if len(sf.fidelity.per_class):
                files += _write_table(_per_class_display(sf), sf.fidelity.per_class, out_dir, f"{prefix}per-class",
                                      f"{sf.name}: test accuracy per class; KD − CE paired by seed, then averaged "
                                      f"over n={int(sf.fidelity.per_class['n_seeds'].iloc[0])} seeds.")
            figs = {key: {"uri": _save(draw(sf), out_dir, prefix + key, files), "file": prefix + key}
                    for key, draw in FIGURES.items()}
            studies_ctx.append(_study_context(sf, figs, grid_stem, prefix))
    html = _template().render(
        confidence=f"{CONFIDENCE:.0%}", title=" + ".join(studies), source=source_note(table),
        architectures=architecture_note(table), comparison=display, comparison_png=comparison_png,
        studies=studies_ctx, sections=SECTIONS, several=len(frames) > 1,
        generator={"commit": kdbench_commit(), **library_versions()})
    _put(out_dir / "index.html", html)
    files.append(out_dir / "index.html")
    return Report(out_dir, frames, table, markdown, files)


def _study_context(sf: StudyFrames, figs: dict[str, dict[str, str]], grid_stem: str, prefix: str) -> dict[str, Any]:
    prov = dict(sf.provenance)
    prov["counts"] = sf.provenance["counts"].reset_index()
    p = sf.predictions
    return {
        "name": sf.name, "frames": sf, "figs": figs, "grid_stem": grid_stem, "grid": _grid_display(sf),
        "verdict": sf.verdict, "missing": sf.missing, "prov": prov,
        "importances": sf.importances, "pred_notes": p.notes, "pred_seed": p.seed,
        "pred_caption": _predictions_caption(sf), "importances_caption": _importances_caption(sf),
        "fidelity": _fidelity_display(sf), "per_class": _per_class_display(sf),
        "fidelity_sentences": fidelity_sentences(sf), "fidelity_notes": sf.fidelity.notes, "prefix": prefix,
        "evidence": sf.evidence.sentences, "effects": _effects_display(sf) if sf.is_grid else None,
        "budgets": sf.evidence.budgets, "replicates": sf.evidence.replicates, "pruner": sf.evidence.pruner,
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
    env.globals["numeric"] = _numeric  # right-align the numeric columns, as in the Markdown and LaTeX tables
    return env.get_template("index.html.j2")
