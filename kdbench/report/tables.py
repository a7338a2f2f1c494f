"""The report's tables as text, and their Markdown and LaTeX.

The display functions turn :mod:`kdbench.report.frames`' numbers into text tables (accuracies in %,
differences in pp with their intervals, p-values) and the notes beside them (sources, architectures,
fidelity findings). :func:`markdown_table` writes a pipe table and :func:`latex_table` a booktabs table
that compiles with pdflatex on a default article page: ASCII only (numbers, T and symbols in math
mode), numeric columns right-aligned, headers and multi-line cells stacked, provenance in a note.

The module runs past 400 lines because it is the one place where every table of the report gets its text
form (percentages, intervals, p-values) and its Markdown and LaTeX: split, the formats would drift apart.
"""

from __future__ import annotations

import re
import textwrap
import unicodedata
from typing import Any

import pandas as pd

from kdbench.report.frames import StudyFrames, grid_cells
from kdbench.report.methods import arm_label
from kdbench.report.stats import CONFIDENCE

__all__ = [
    "TEX_HEADER_CHARS",
    "TEX_TABCOLSEP",
    "architecture_note",
    "budget_display",
    "calibration_display",
    "comparison_display",
    "cost_display",
    "effects_display",
    "epoch_rho_display",
    "fidelity_display",
    "fidelity_sentences",
    "grid_display",
    "latex_table",
    "markdown_table",
    "methods_display",
    "numeric_columns",
    "per_class_display",
    "source_note",
    "tex_comparison",
    "tex_methods",
    "transfer_display",
]

def _pct(x: Any, digits: int = 2, sign: bool = False) -> str:
    if x is None or pd.isna(x):
        return ""
    return f"{100 * float(x):{'+' if sign else ''}.{digits}f}"


def _num(x: Any, fmt: str) -> str:
    return "" if x is None or pd.isna(x) else format(float(x), fmt)


MCNEMAR = "p (McNemar, 2 networks)"  # its header says what it tests: one seed's two finalist networks, not the methods


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
            "p (paired t)": _p(r["p_value"]), MCNEMAR: _p(r["mcnemar_p"])})
    out = pd.DataFrame(rows, columns=["study", "arm", "model", "T", "α", "lr", "test acc (%)", "n", "KD − CE (pp)",
                                      ci, "p (paired t)", MCNEMAR])
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
        One sentence: per study, its config hash, finalist seeds and their budget, and kdbench commits.
    """
    parts, tunings = [], []
    for study, g in table.groupby("study", sort=False):
        seeds = sorted({x for v in g.loc[g["arm"] != "teacher", "seeds"] for x in str(v).split()}, key=int)
        commits = sorted({c[:12] for v in g["commit"].dropna() for c in str(v).split("; ") if c})
        budgets = sorted({str(b) for b in g.loc[g["arm"] != "teacher", "budget"].dropna()}) \
            if "budget" in g else []
        parts.append(f"{study}: config {g['config_hash'].iloc[0]}, finalist seeds {' '.join(seeds) or 'none'}"
                     + (f" trained {', '.join(budgets)}" if budgets else "")
                     + f", kdbench {', '.join(commits) or 'unknown'}")
        arms = [f"{a.split()[0]} {t}" for a, t in zip(g["arm"], g["tuning"], strict=True)
                if a != "teacher" and isinstance(t, str) and "#" not in a]
        if arms:
            tunings.append((f"{study}: " if table["study"].nunique() > 1 else "") + ", ".join(arms))
    return ("Source: " + ("; ".join(parts) if parts else "no teacher or finalists yet") + "."
            + (f" Tuning: {'; '.join(tunings)}." if tunings else ""))


def grid_display(sf: StudyFrames) -> pd.DataFrame:
    cells = grid_cells(sf, "cell_mean")
    cells.index = [f"α={a:g}" for a in cells.index]
    cells.columns = [f"T={t:g}" for t in cells.columns]
    return cells.rename_axis("val acc (%)").reset_index()


def effects_display(sf: StudyFrames) -> pd.DataFrame:
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


def numeric_columns(df: pd.DataFrame) -> list[bool]:
    """Per column: do its non-empty cells read as numbers? (those columns are right-aligned)"""
    out = []
    for c in df.columns:
        cells = [str(v) for v in df[c] if str(v).strip()]
        out.append(bool(cells) and sum(bool(_NUMERIC_CELL.match(v)) for v in cells) * 2 >= len(cells))
    return out


def fidelity_display(sf: StudyFrames) -> pd.DataFrame:
    """Per seed: the test images only one student got right, McNemar's test on them, teacher agreement."""
    rows = [{"seed": str(int(r["seed"])), "only CE right": _num(r["ce_only"], ",.0f"),
             "only KD right": _num(r["kd_only"], ",.0f"),
             "p (McNemar)": _p(r["mcnemar_p"]) + ("" if r["mcnemar_exact"] is None else
                                                  " exact" if r["mcnemar_exact"] else " χ²"),
             "CE agrees with teacher (%)": _pct(r["ce_agree"]), "KD agrees with teacher (%)": _pct(r["kd_agree"])}
            for _, r in sf.fidelity.seeds.iterrows()]
    return pd.DataFrame(rows, columns=["seed", "only CE right", "only KD right", "p (McNemar)",
                                       "CE agrees with teacher (%)", "KD agrees with teacher (%)"])


def _ci(mean: Any, low: Any, high: Any) -> str:
    if mean is None or pd.isna(mean):
        return ""
    return _pct(mean, sign=True) + ("" if pd.isna(low) else f" [{_pct(low, sign=True)}, {_pct(high, sign=True)}]")


def methods_display(sf: StudyFrames) -> pd.DataFrame:
    """Each method's best configuration, test mean ± sd (n), Δ vs CE and vs Hinton KD with CI and Holm p."""
    rows = [{"method": r["method"], "configuration": r["configuration"],
             "test acc (%)": "" if pd.isna(r["test_mean"]) else _pct(r["test_mean"]) +
             ("" if pd.isna(r["test_sd"]) else f" ± {_pct(r['test_sd'])}"), "n": str(int(r["n"])),
             "Δ vs CE (pp) [95% CI]": _ci(r["vs_ce_mean"], r["vs_ce_low"], r["vs_ce_high"]),
             "p Holm (vs CE)": _p(r["vs_ce_p_holm"]),
             "Δ vs KD (pp) [95% CI]": _ci(r["vs_kd_mean"], r["vs_kd_low"], r["vs_kd_high"]),
             "p Holm (vs KD)": _p(r["vs_kd_p_holm"]),
             "search runs": f"{int(r['search_runs'])} ({int(r['cells'])} cells)",
             "trial cost × CE": _num(r["trial_cost_vs_ce"], ".2f"),
             "test ECE (%)": _pct(r.get("ece_mean"), 1) +
             (" (> 2× best baseline)" if r.get("ece_flag") else "")} for _, r in sf.methods.iterrows()]
    return pd.DataFrame(rows)


def tex_methods(display: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The method table narrowed for a page: each difference over its CI over its Holm p, the configurations
    and budgets in the note (returned)."""
    def stack(diff: str, p: str) -> list[str]:  # the difference over its CI over its p
        return [v.replace(" [", "\n[") + (f"\np Holm {q}" if q else "")
                for v, q in zip(display[diff], display[p], strict=True)]

    out = pd.DataFrame({"method": display["method"], "test acc (%)": display["test acc (%)"], "n": display["n"],
                        "vs CE (pp) [95% CI]": stack("Δ vs CE (pp) [95% CI]", "p Holm (vs CE)"),
                        "vs KD (pp) [95% CI]": stack("Δ vs KD (pp) [95% CI]", "p Holm (vs KD)")})
    note = "; ".join(f"{r['method']}: {r['configuration']}, {r['search runs']} search runs, trial x CE "
                     f"{r['trial cost × CE']}" + (f", test ECE {r['test ECE (%)']} %" if r.get("test ECE (%)") else "")
                     for _, r in display.iterrows())
    return out, note


def calibration_display(sf: StudyFrames) -> pd.DataFrame:
    """ECE (%) and NLL of each arm, mean ± sd over its seeds, n; ECE after temperature scaling and the mean fitted T."""
    def pm(mean: Any, sd: Any, scale: float, digits: int) -> str:
        if pd.isna(mean):
            return ""
        return f"{scale * mean:.{digits}f}" + ("" if pd.isna(sd) else f" ± {scale * sd:.{digits}f}")

    scaled = "ECE after T-scaling (%)"
    rows = [{"arm": r["arm"], "ECE (%)": pm(r["ece_mean"], r["ece_sd"], 100, 2),
             "NLL (nats)": pm(r["nll_mean"], r["nll_sd"], 1, 3), "n": str(int(r["n"])),
             scaled: pm(r.get("ece_ts_mean"), r.get("ece_ts_sd"), 100, 2),
             "T fitted on val": _num(r.get("t_mean"), ".2f")}
            for _, r in sf.calibration.iterrows()]
    return pd.DataFrame(rows, columns=["arm", "ECE (%)", "NLL (nats)", "n", scaled, "T fitted on val"])


def cost_display(sf: StudyFrames) -> pd.DataFrame:
    """Wall-clock per arm and stage: runs, total and median seconds, one search trial relative to CE's."""
    rows = [{"arm": r["arm"], "stage": r["stage"], "runs": str(int(r["runs"])), "total (s)": _num(r["total_s"], ",.1f"),
             "median (s)": _num(r["median_s"], ",.2f"), "trial × CE": _num(r["vs_ce"], ".2f")}
            for _, r in sf.cost.iterrows()]
    return pd.DataFrame(rows, columns=["arm", "stage", "runs", "total (s)", "median (s)", "trial × CE"])


def budget_display(sf: StudyFrames) -> pd.DataFrame:
    """Per budget: the best cell and KD − CE on validation with its interval and n (the transfer check's other half)."""
    ci = f"{CONFIDENCE:.0%} CI (pp)"
    rows = [{"budget": r["budget"], "trained": r["stage"], "best KD configuration": r["best_cell"],
             "KD val (%)": _pct(r["kd_val"]), "CE val (%)": _pct(r["ce_val"]), "n": _num(r["n"], ".0f"),
             "KD − CE (pp)": _pct(r["diff"], sign=True),
             ci: "" if pd.isna(r["ci_low"]) else f"[{_pct(r['ci_low'], sign=True)}, {_pct(r['ci_high'], sign=True)}]"}
            for _, r in sf.budget_table.iterrows()]
    return pd.DataFrame(rows, columns=["budget", "trained", "best KD configuration", "KD val (%)", "CE val (%)", "n",
                                       "KD − CE (pp)", ci])


def transfer_display(sf: StudyFrames, i: int) -> pd.DataFrame:
    """One method's transfer table: each configuration's search rank and value, and its value and rank at the
    finalists' budget (validation accuracy, mean over seeds)."""
    t = sf.transfers[i]
    b = t.budgets
    rows = [{"configuration": r["config"], "search rank": str(int(r["search_rank"])),
             f"val at {b.selection} (%)": f"{_pct(r['search_val'])} (n={int(r['search_n'])})",
             f"val at {b.finalists} (%)": _pct(r["full_val"]) + ("" if pd.isna(r["full_sd"]) else
                                                               f" ± {_pct(r['full_sd'])}") + f" (n={int(r['full_n'])})",
             f"rank at {b.finalists}": str(int(r["full_rank"]))} for _, r in t.table.iterrows()]
    return pd.DataFrame(rows, columns=["configuration", "search rank", f"val at {b.selection} (%)",
                                       f"val at {b.finalists} (%)", f"rank at {b.finalists}"])


def epoch_rho_display(sf: StudyFrames) -> pd.DataFrame:
    """Per search stage, budget and epoch (or step, on ``student.eval_every``'s grid): Spearman ρ of that
    point's validation accuracy with the final one."""
    ci, rho = f"{CONFIDENCE:.0%} CI", sf.epoch_rho
    unit, at = ("step", ("step", "steps")) if len(rho) and rho["step"].notna().all() else ("epoch", ("epoch", "epochs"))
    rows = [{"arm": arm_label(str(r["stage"])), "budget": str(r["budget"]), unit: f"{int(r[at[0]])} of {int(r[at[1]])}",
             "n trials": str(int(r["n"])), "Spearman ρ": _num(r["rho"], ".2f"),
             ci: "" if pd.isna(r["ci_low"]) else f"[{r['ci_low']:.2f}, {r['ci_high']:.2f}]"}
            for _, r in rho.iterrows()]
    return pd.DataFrame(rows, columns=["arm", "budget", unit, "n trials", "Spearman ρ", ci])


def per_class_display(sf: StudyFrames) -> pd.DataFrame:
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


def markdown_table(df: pd.DataFrame) -> str:
    """A pipe table, numeric columns right-aligned; a cell's lines joined by ", "."""
    cells = df.astype(str).map(lambda v: v.replace("\n", ", "))
    align = ["right" if n else "left" for n in numeric_columns(df)]
    return cells.to_markdown(index=False, disable_numparse=True, colalign=align) + "\n"


# LaTeX: pdflatex reads ASCII only (a default article has no Unicode font set up), so every symbol the report
# prints becomes math mode, and numbers are typeset in math (a true minus sign, "{,}" thousands separators).
_LATEX_SPECIAL = {c: "\\" + c for c in "&%$#_{}"} | {"~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                                                       "\\": r"\textbackslash{}"}
_LATEX_MATH = {"α": r"\alpha", "β": r"\beta", "Δ": r"\Delta", "−": "-", "±": r"\pm", "×": r"\times",
               "≠": r"\neq", "≤": r"\leq", "≥": r"\geq", "·": r"\cdot", "²": "^2", "⁻": "^-", "¹": "^1",
               "³": "^3", "→": r"\to", "≈": r"\approx", "μ": r"\mu", "χ": r"\chi", "τ": r"\tau",
               "<": "<", ">": ">", "|": r"\vert"}  # the ASCII three print as other glyphs in text mode
TEX_HEADER_CHARS = 10  # a .tex header's lines are wrapped at this many characters
TEX_TABCOLSEP = r"\setlength{\tabcolsep}{4pt}"  # LaTeX's 6pt each side leaves a 10-column table no room
_LATEX_OPERATORS = "−±×≠≤≥·→≈<>|"
_LATEX_TEXT = {"—": "---", "–": "--", "…": r"\dots{}", "’": "'", "‘": "`", "“": "``", "”": "''", "\u00a0": "~"}
_LATEX_TOKEN = re.compile(r"(?P<num>(?<![\w.+\-−#])[−+-]?\d+(?:[.,]\d+)*(?:e[−+-]?\d+)?)|(?P<sym>["
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


def latex_table(df: pd.DataFrame, caption: str, note: str = "") -> str:
    """A booktabs table for a default article page: ASCII only (see :func:`_tex`), numeric columns right-aligned,
    units under the headers, a cell's lines stacked, and provenance in a footnote-sized note below the table.
    A ``study`` column becomes a spanning row above each study's rows (a study's name can be long)."""
    df = df.reset_index(drop=True)
    group = df.pop("study") if "study" in df.columns else None
    align = ["r" if n else "l" for n in numeric_columns(df)]
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


def tex_comparison(display: pd.DataFrame) -> pd.DataFrame:
    """The comparison narrowed for a page: the models are in the note, and the difference sits over its CI."""
    ci = next(c for c in display.columns if "CI" in c)
    out = display.drop(columns=["model", ci])
    out["arm"] = out["arm"].str.replace(" student", "")  # "CE", "KD", "KD #2": the note names the models
    out["KD − CE (pp)"] = [f"{d}\n{c}" if c else d for d, c in zip(display["KD − CE (pp)"], display[ci], strict=True)]
    return out.rename(columns={"KD − CE (pp)": f"KD − CE (pp) [{ci.split(' (')[0]}]", "p (paired t)": "p (t)",
                               MCNEMAR: "p (McN., 2 nets)"})
