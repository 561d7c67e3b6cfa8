"""What every page of the static site is made of, and how it is written: pages as data (sections
of blocks), the site's paths and names, the `Site` the page builders (`reportgen.render.pages`)
register their figures and tables with, the Jinja2 templates (which the PDF shares) and the links
between pages.

A page is a list of `Section`s; a section holds blocks (text, notices, figures, tables, link lists,
the attention viewer). Figures and tables are numbered when a document is assembled, so the site
(numbered per page) and the PDF (numbered through the document) place the same objects.
Every path comes from `safe_name`; no text from results is ever used raw in a path.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import posixpath
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from reportgen.errors import ReportgenError
from reportgen.names import safe_name
from reportgen.render import figures as F
from reportgen.render.tables import Cell, Table, fmt_est, fmt_num
from reportgen.results.claims import model_claims


def _templates_dir() -> Path:
    """templates/ of the source tree (editable install), else the copy a wheel installs."""
    for d in (Path(__file__).resolve().parents[2] / "templates", Path(sys.prefix) / "share" / "reportgen" / "templates"):
        if (d / "base.html").is_file():
            return d
    raise ReportgenError("reportgen's templates are missing; reinstall it (pip install -e . from the repository)")


TEMPLATES = _templates_dir()


# ---------------------------------------------------------------- page model
@dataclass
class Block:
    """One piece of a section: kind is the partial that renders it (text, notice, figure, table,
    links, notes, viewer); `item` its payload; `number` set when a document is assembled."""

    kind: str
    item: Any
    number: Optional[int] = None


@dataclass
class Section:
    id: str
    title: str
    blocks: list[Block]
    level: int = 1  # 1 = top section of a page


@dataclass
class Page:
    path: str  # from the site root, e.g. "models/tiny.html"
    template: str
    title: str
    sections: list[Section]
    extra: dict = field(default_factory=dict)


def text(s: str) -> Block:
    return Block("text", s)


def notice(s: str) -> Block:
    return Block("notice", s)


def fig_block(f: Optional[F.ReportFigure], missing: str = "") -> Optional[Block]:
    if f is None:
        return notice(missing) if missing else None
    return Block("figure", f)


def links(items: list[tuple[str, str]]) -> Block:
    return Block("links", items)


def notes(items: list[str]) -> Block:
    return Block("notes", items)


def not_run(what: str) -> Block:
    return notice(f"Not run: the {what} analysis was not part of this build, so there is nothing to show here.")


NUMBERED_AS = {"sortable": "table"}  # block kinds numbered with another kind (a sortable table is a table)


def number_blocks(sections: list[Section]) -> list[Section]:
    """Copies of `sections` whose figures and tables are numbered in order of appearance."""
    counters = {"figure": 0, "table": 0}
    out = []
    for s in sections:
        blocks = []
        for b in s.blocks:
            kind = NUMBERED_AS.get(b.kind, b.kind)
            if kind in counters:
                counters[kind] += 1
                b = dataclasses.replace(b, number=counters[kind])
            blocks.append(b)
        out.append(dataclasses.replace(s, blocks=blocks))
    return out


# ---------------------------------------------------------------- names and paths
class Paths:
    """Every site path of a report, derived once: model slugs and example slugs per model."""

    def __init__(self, report):
        self.models = {}
        for m in report.models:
            slug = safe_name(m.name)
            while slug in self.models.values():
                slug += "-x"
            self.models[m.name] = slug
        self.examples: dict[str, dict[int, str]] = {}
        for m in report.models:
            seen: dict[str, int] = {}
            slugs = {}
            for i, ex in enumerate(m.findings.examples):
                slug = safe_name(ex.key)
                seen[slug] = seen.get(slug, 0) + 1
                slugs[i] = slug if seen[slug] == 1 else f"{slug}-{seen[slug]}"
            self.examples[m.name] = slugs

    def model(self, m, anchor: str = "") -> str:
        return f"models/{self.models[m.name]}.html" + (f"#{anchor}" if anchor else "")

    def example(self, m, i: int) -> str:
        return f"examples/{self.models[m.name]}/{self.examples[m.name][i]}.html"

    def example_data(self, m, i: int) -> str:
        return f"examples/{self.models[m.name]}/{self.examples[m.name][i]}.data.js"

    def figure(self, m, name: str) -> str:
        return f"figures/{self.models[m.name]}/{name}"

    def example_figure(self, m, i: int, name: str) -> str:
        return f"figures/{self.models[m.name]}/examples/{self.examples[m.name][i]}-{name}"

    def table(self, m, name: str) -> str:
        return f"tables/{self.models[m.name]}/{name}" if m is not None else f"tables/{name}"


# ---------------------------------------------------------------- small helpers
def distinct_labels(report):
    """The report with every model label made unique (a repeated label gets the model's name), so
    that navigation and comparison columns can tell the models apart."""
    counts: dict[str, int] = {}
    for m in report.models:
        counts[m.label] = counts.get(m.label, 0) + 1
    if all(n == 1 for n in counts.values()):
        return report
    models = [m if counts[m.label] == 1 else dataclasses.replace(m, label=f"{m.label} ({m.name})")
              for m in report.models]
    return dataclasses.replace(report, models=models)


def model_shape(m) -> str:
    c = m.provenance.model_config
    return f"{c.get('n_layers', '?')} layer(s) × {c.get('n_heads', '?')} heads, d_model {c.get('d_model', '?')}"


def task_text(task: dict) -> str:
    if not task:
        return "unknown task"
    steps = "with steps" if task.get("with_steps") else "without steps"
    return (f"{task.get('task', '?')}, {task.get('min_digits', '?')}-{task.get('max_digits', '?')} digits, "
            f"{steps}, {task.get('answer_order', 'plain')} answer order")


def short_hash(h: Optional[str]) -> str:
    return (h or "")[:12] or "n/a"


def layer_labels(m) -> list[str]:
    lens = m.findings.logit_lens
    if lens is not None:
        return list(lens.layer_labels)
    n = int(m.provenance.model_config.get("n_layers", 0))
    return ["embed"] + [f"L{l}" for l in range(n)]


def kv_rows(d: dict) -> list[list]:
    """Rows of (key, value) for a config dict, sorted by key: floats to 4 significant digits (a
    p-value or learning rate must not round to 0.00), nested values as compact JSON."""
    def show(v):
        if isinstance(v, float):
            return Cell(v, text=f"{v:.4g}")
        if isinstance(v, (str, int, bool)) or v is None:
            return v
        return json.dumps(v, sort_keys=True)

    return [[k, show(v)] for k, v in sorted(d.items())]


# ---------------------------------------------------------------- the site being assembled
class Site:
    """A report's site as its pages are built: the report (labels made distinct), its paths and
    claims, and the figures and tables the pages register (data only; nothing is written here)."""

    def __init__(self, report, pdf: bool):
        self.report = distinct_labels(report)
        self.paths = Paths(report)
        self.pdf = pdf
        self.figures: list[F.ReportFigure] = []
        self.tables: list[Table] = []
        self.claims = {m.name: model_claims(m) for m in self.report.models}

    def fig(self, f: Optional[F.ReportFigure], missing: str = "") -> Optional[Block]:
        if f is not None:
            self.figures.append(f)
        return fig_block(f, missing)

    def table(self, t: Table) -> Block:
        self.tables.append(t)
        return Block("table", t)


RENDER_LIBRARIES = ("jinja2", "matplotlib", "numpy", "pypdf", "weasyprint")  # what draws and typesets a report


# ---------------------------------------------------------------- templates and writing
def environment() -> Environment:
    """Jinja2 with autoescaping for every .html template and undefined names as errors."""
    env = Environment(loader=FileSystemLoader(str(TEMPLATES)), autoescape=select_autoescape(["html"]),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters["est"] = fmt_est
    env.filters["num"] = fmt_num
    return env


@functools.cache
def _captions():
    """templates/captions.txt as a module of macros (plain text: autoescaping is for .html only)."""
    return environment().get_template("captions.txt").module


def caption(name: str) -> str:
    """The caption or prose `name` of templates/captions.txt, on one line."""
    return " ".join(str(getattr(_captions(), name)()).split())


class SiteLinks:
    """Links from one page of the site: relative paths, so the site works from file:// and any sub-path."""

    pdf = False

    def __init__(self, page_path: str):
        self.base = posixpath.dirname(page_path)
        self.root = "" if not self.base else posixpath.relpath(".", self.base) + "/"

    def href(self, target: Optional[str]) -> Optional[str]:
        if target is None:
            return None
        path, _, frag = target.partition("#")
        rel = posixpath.relpath(path, self.base or ".") if path else ""
        return rel + (f"#{frag}" if frag else "")

    asset = href

    def anchor(self, section_id: str) -> str:
        return section_id


def write_text(path: Path, content: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content, encoding="utf-8", newline="\n")


def copy_static(out_dir: Path) -> None:
    """The stylesheets and scripts the pages (and the PDF) load, into `out_dir/static`."""
    static = out_dir / "static"
    static.mkdir(parents=True, exist_ok=True)
    for src in sorted((TEMPLATES / "static").iterdir()):
        shutil.copyfile(src, static / src.name)
