"""The report's text tables: LaTeX that pdflatex reads without Unicode set-up, right-aligned numbers."""

from __future__ import annotations

import pandas as pd

from kdbench.report.tables import latex_table, markdown_table, numeric_columns


def _cells(tex: str) -> str:
    return tex.split("\\midrule\n")[1].split("\n\\bottomrule")[0]


def test_latex_is_ascii_with_numbers_and_symbols_in_math_mode() -> None:
    df = pd.DataFrame({"arm": ["KD #2 & co_x"], "α": ["0.5"], "test acc (%)": ["84.07 ± 0.48"],
                       "KD − CE (pp)": ["[-0.04, +1.57]"], "p": ["<0.0001"], "seeds": ["1 2 3"]})
    tex = latex_table(df, "T × α: naïve 95% CI", note="device: x86_64, 1,276,810 parameters")
    assert tex.isascii()
    assert r"\caption{$T \times \alpha$: naive $95$\% CI}" in tex
    assert (_cells(tex)
            == r"KD \#2 \& co\_x & $0.5$ & $84.07 \pm 0.48$ & {}[$-0.04$, $+1.57$] & $< 0.0001$ & $1$ $2$ $3$ \\")
    assert r"\begin{tabular}{lrrrrr}" in tex and "$1{,}276{,}810$ parameters" in tex and "x86\\_64" in tex
    assert r"\begin{tabular}[b]{@{}r@{}}test acc \\ (\%)\end{tabular}" in tex  # the unit under the header


def test_numeric_columns_are_right_aligned_in_markdown() -> None:
    df = pd.DataFrame({"name": ["a", "b"], "value": ["1.5", ""], "cell": ["84.12\n±1.48 n=3", "not run"]})
    assert numeric_columns(df) == [False, True, True]
    md = markdown_table(df).splitlines()
    assert md[1].replace(" ", "").startswith("|:-") and md[1].rstrip("|").endswith(":")
    assert "84.12, ±1.48 n=3" in md[2]  # a cell's lines joined for Markdown
