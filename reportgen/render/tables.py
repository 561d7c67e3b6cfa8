"""Tables as data: one model rendered as HTML (through the table partial), CSV and LaTeX booktabs.

A cell is a plain value (str, int, float, bool, None, Estimate) or a `Cell` that adds a link
target or an emphasis (a highlighted difference). CSV keeps full precision and splits an
Estimate into mean, lo, hi and n columns; HTML and LaTeX show the formatted text.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from typing import Any, Optional

from reportgen.findings import Estimate

MISSING = "n/a"
# A printed table line holds about this many characters (digits and bold headers are wider than
# the average letter) at 7.5 pt across A4 between the margins; a cell's padding takes about three.
LINE_CHARS, PAD_CHARS = 120, 3


@dataclass(frozen=True)
class Cell:
    """A value with an optional link target (a site path), an emphasis flag, and optionally the
    text to show for it (the CSV keeps the value at full precision)."""

    value: Any
    href: Optional[str] = None
    strong: bool = False
    text: Optional[str] = None


@dataclass
class Table:
    """A numbered-in-place table; `key` is its download path stem relative to the site root."""

    key: str
    caption: str
    columns: list[str]
    rows: list[list[Any]]
    note: str = ""
    digits: int = 2
    site_only: bool = False  # a detail table the PDF names (with its CSV on the site) instead of printing
    numeric: list[bool] = field(init=False)

    def __post_init__(self):
        self.numeric = [_is_numeric([_value(r[i]) for r in self.rows]) for i in range(len(self.columns))]

    @property
    def csv_path(self) -> str:
        return f"{self.key}.csv"

    @property
    def tex_path(self) -> str:
        return f"{self.key}.tex"

    def html_rows(self) -> list[list[dict]]:
        """Rows of {text, href, strong, numeric} for the table partial."""
        return [
            [
                {
                    "text": self.cell_text(c),
                    "href": c.href if isinstance(c, Cell) else None,
                    "strong": isinstance(c, Cell) and c.strong,
                    "numeric": self.numeric[i],
                    "long": len(self.cell_text(c)) > 40,
                }
                for i, c in enumerate(row)
            ]
            for row in self.rows
        ]

    def print_widths(self) -> list[float]:
        """Column widths in percent of the page for the PDF's fixed table layout, as an automatic
        layout would give them (WeasyPrint's measures every cell's text, which costs most of the
        PDF's typesetting time): each column at least its longest word, the rest of the line
        shared in proportion to what its longest cell lacks."""
        least, most = [], []
        for i, name in enumerate(self.columns):
            cells = [self.cell_text(r[i]) for r in self.rows]
            # a number (or an estimate with its interval) is not broken across lines
            words = name.split() + [w for t in cells for w in ([t] if self.numeric[i] else t.split())]
            least.append(max(map(len, words), default=0) + PAD_CHARS)
            most.append(max(least[-1], max(map(len, [name, *cells])) + PAD_CHARS))
        if sum(most) <= LINE_CHARS:
            widths = most
        elif sum(least) >= LINE_CHARS:
            widths = least
        else:
            spare, lack = LINE_CHARS - sum(least), sum(most) - sum(least)
            widths = [m + spare * (x - m) / lack for m, x in zip(least, most)]
        return [round(100 * w / sum(widths), 2) for w in widths]

    def cell_text(self, c) -> str:
        return c.text if isinstance(c, Cell) and c.text is not None else fmt_value(_value(c), self.digits)

    def to_csv(self) -> str:
        """CSV with full-precision numbers; an Estimate column becomes col, col_lo, col_hi, col_n."""
        est_cols = [any(isinstance(_value(r[i]), Estimate) for r in self.rows) for i in range(len(self.columns))]
        header = []
        for name, is_est in zip(self.columns, est_cols):
            header += [name, f"{name}_lo", f"{name}_hi", f"{name}_n"] if is_est else [name]
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(header)
        for row in self.rows:
            out = []
            for c, is_est in zip(row, est_cols):
                v = _value(c)
                if is_est and isinstance(v, Estimate):
                    out += [_csv_num(v.mean), _csv_num(v.lo), _csv_num(v.hi), str(v.n)]
                elif is_est:
                    out += [_csv_scalar(v), "", "", ""]
                else:
                    out.append(_csv_scalar(v))
            writer.writerow(out)
        return buf.getvalue()

    def to_latex(self) -> str:
        """A booktabs `table` environment; emphasised cells are bold."""
        align = "".join("r" if n else "l" for n in self.numeric)
        lines = [
            "% Requires \\usepackage{booktabs}.",
            "\\begin{table}[ht]",
            "\\centering",
            f"\\caption{{{latex_escape(self.caption)}}}",
            f"\\label{{tab:{latex_label(self.key)}}}",
            f"\\begin{{tabular}}{{{align}}}",
            "\\toprule",
            " & ".join(latex_escape(c) for c in self.columns) + " \\\\",
            "\\midrule",
        ]
        for row in self.rows:
            cells = []
            for c in row:
                text = latex_escape(self.cell_text(c))
                cells.append(f"\\textbf{{{text}}}" if isinstance(c, Cell) and c.strong else text)
            lines.append(" & ".join(cells) + " \\\\")
        lines += ["\\bottomrule", "\\end{tabular}"]
        if self.note:
            lines.append(f"\\par\\smallskip{{\\footnotesize {latex_escape(self.note)}}}")
        lines.append("\\end{table}")
        return "\n".join(lines) + "\n"


def _is_numeric(values) -> bool:
    """A column is right-aligned when every present value is a number or an Estimate."""
    present = [v for v in values if v is not None and v != "—"]
    return bool(present) and all(isinstance(v, (int, float, Estimate)) and not isinstance(v, bool) for v in present)


def _value(c):
    return c.value if isinstance(c, Cell) else c


def _finite(x) -> bool:
    return x is not None and not (isinstance(x, float) and math.isnan(x))


def fmt_num(x, digits: int = 2) -> str:
    """A number for display: ints as they are, floats with fixed decimals, NaN as 'n/a'."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return MISSING
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return str(x)
    return _fixed(x, digits)


def fmt_est(e: Optional[Estimate], digits: int = 2) -> str:
    """'0.93 [0.90, 0.96]'; the interval is left out where it is missing (NaN)."""
    if e is None or not _finite(e.mean):
        return MISSING
    mean = _fixed(e.mean, digits)
    if not (_finite(e.lo) and _finite(e.hi)):
        return f"{mean} [no CI]"
    return f"{mean} [{_fixed(e.lo, digits)}, {_fixed(e.hi, digits)}]"


def _fixed(x, digits: int) -> str:
    """x with fixed decimals; a value that rounds to zero shows as 0.00, never -0.00."""
    text = f"{float(x):.{digits}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def fmt_value(v, digits: int = 2) -> str:
    if isinstance(v, Estimate):
        return fmt_est(v, digits)
    if isinstance(v, (int, float, bool)) or v is None:
        return fmt_num(v, digits)
    return str(v)


def _csv_num(x) -> str:
    return "" if not _finite(x) else repr(float(x))


def _csv_scalar(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return _csv_num(v)
    return str(v)


_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
          "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
          "<": r"\textless{}", ">": r"\textgreater{}"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX.get(ch, ch) for ch in str(text))


def latex_label(key: str) -> str:
    return "".join(ch if ch.isalnum() else ":" for ch in key)
