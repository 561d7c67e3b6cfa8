"""The PDF report: the site's sections placed in one document (report_pdf.html + print.css) and
typeset by WeasyPrint, with the results attached. WeasyPrint lays out an empty placeholder of
each figure's size; each figure's own PDF is then drawn into that box.

Deterministic: figures and tables are numbered through the document, the PDF dates come from
`report.generated_at` (or a fixed 1980-01-01 when undated), the file identifier is a hash of
the results, and WeasyPrint may read only local files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

from jinja2 import Environment

from reportgen.atomic import write_file
from reportgen.render.site import Page, Section, Site, number_blocks

UNDATED = datetime(1980, 1, 1, tzinfo=timezone.utc)
DEFAULT_MAX_EXAMPLES = 8


class PdfLinks:
    """Links inside the PDF: pages in the document become anchors; anything else is plain text."""

    pdf = True
    root = ""

    def __init__(self, anchors: dict[str, str], page_path: str):
        self.anchors = anchors
        self.prefix = anchors[page_path]

    def href(self, target: Optional[str]) -> Optional[str]:
        if target is None:
            return None
        path, _, frag = target.partition("#")
        anchor = self.anchors.get(path)
        if anchor is None:
            return None
        return f"#{anchor}--{frag}" if frag else f"#{anchor}"

    def asset(self, path: str) -> str:
        return path

    def anchor(self, section_id: str) -> str:
        return f"{self.prefix}--{section_id}"


@dataclass
class ExampleEntry:
    id: str
    title: str
    sections: list[Section]
    links: PdfLinks


@dataclass
class Part:
    id: str
    title: str
    sections: list[Section]
    links: PdfLinks
    intro: str = ""
    examples: list[ExampleEntry] = field(default_factory=list)


def max_examples(model) -> int:
    value = (model.provenance.analysis_config or {}).get("max_pdf_examples", DEFAULT_MAX_EXAMPLES)
    return max(0, int(value))


SUMMARY_SECTIONS = {"index": ("findings", "models", "accuracy"), "compare": ("differences", "accuracy"),
                    "model": ("findings", "accuracy")}


def document_parts(site: Site, pages: list[Page], summary: bool = False) -> list[Part]:
    """Summary, comparison, each model and its (capped) examples, provenance: in that order. The
    summary version keeps the findings, the comparison and a short chapter per model."""
    by_path = {p.path: p for p in pages}
    report, paths = site.report, site.paths
    anchors = {"index.html": "summary", "compare.html": "comparison", "provenance.html": "provenance"}
    chosen = {}
    for m in report.models:
        slug = paths.models[m.name]
        anchors[paths.model(m)] = f"model-{slug}"
        chosen[m.name] = list(range(min(len(m.findings.examples), max_examples(m))))
        for i in chosen[m.name]:
            anchors[paths.example(m, i)] = f"example-{slug}-{paths.examples[m.name][i]}"

    def part(path: str, title: str, drop: tuple[str, ...] = (), intro: str = "", keep: tuple[str, ...] = ()) -> Part:
        sections = [s for s in by_path[path].sections if s.id not in drop and (not keep or s.id in keep)]
        return Part(anchors[path], title, sections, PdfLinks(anchors, path), intro)

    if summary:
        parts = [part("index.html", "Summary", keep=SUMMARY_SECTIONS["index"]),
                 part("compare.html", "Comparison", keep=SUMMARY_SECTIONS["compare"])]
        parts += [part(paths.model(m), f"Model: {m.label}", keep=SUMMARY_SECTIONS["model"],
                       intro="The full chapter, with every analysis, is on the site and in the full PDF.")
                  for m in report.models]
        return _numbered(parts)
    parts = [part("index.html", "Summary", drop=("contents",)), part("compare.html", "Comparison")]
    for m in report.models:
        parts.append(part(paths.model(m), f"Model: {m.label}"))
        exs = m.findings.examples
        if exs:
            n = len(chosen[m.name])
            intro = (f"{n} of {len(exs)} analysed examples (the PDF shows at most {max_examples(m)} per model; "
                     f"the site has them all).")
            ex_part = Part(f"examples-{paths.models[m.name]}", f"Examples: {m.label}", [],
                           PdfLinks(anchors, paths.model(m)), intro)
            for i in chosen[m.name]:
                page = by_path[paths.example(m, i)]
                ex_part.examples.append(ExampleEntry(anchors[page.path], f"Example {page.title}", page.sections,
                                                     PdfLinks(anchors, page.path)))
            parts.append(ex_part)
    parts.append(part("provenance.html", "Provenance"))
    return _numbered(parts)


def figure_keys(parts: list[Part]) -> set[str]:
    """The keys of the figures the document `parts` show (the site shows more: every example)."""
    sections = [s for p in parts for s in p.sections + [s for e in p.examples for s in e.sections]]
    return {b.item.key for s in sections for b in s.blocks if b.kind == "figure"}


def _numbered(parts: list[Part]) -> list[Part]:
    """Number figures and tables through the whole document, in reading order."""
    flat = [s for p in parts for s in p.sections + [s for e in p.examples for s in e.sections]]
    numbered = iter(number_blocks(flat))
    out = []
    for p in parts:
        sections = [next(numbered) for _ in p.sections]
        examples = [dataclasses.replace(e, sections=[next(numbered) for _ in e.sections]) for e in p.examples]
        out.append(dataclasses.replace(p, sections=sections, examples=examples))
    return out


def table_of_contents(parts: list[Part]) -> list[dict]:
    toc = []
    for p in parts:
        toc.append({"level": 1, "title": p.title, "id": p.id})
        toc += [{"level": 2, "title": s.title, "id": p.links.anchor(s.id)} for s in p.sections if s.level == 1]
        toc += [{"level": 2, "title": e.title, "id": e.id} for e in p.examples]
    return toc


def _date(generated_at: str) -> datetime:
    try:
        when = datetime.fromisoformat(generated_at.replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        return UNDATED
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def render_pdf(site: Site, parts: list[Part], out_dir: Path, env: Environment, attachments: dict[str, bytes]) -> Path:
    """Write `out_dir/report.pdf` from the site's pages as document_parts placed them (their figures
    must already be on disk)."""
    report = site.report
    hashes = [f"{m.name} sha256:{m.provenance.sha256}" for m in report.models]
    html = env.get_template("report_pdf.html").render(
        report=report, doc=report, parts=parts, toc=table_of_contents(parts), pdf=True,
        attachment_names=sorted(attachments),
        abstract=[(m.label, site.claims[m.name].summary) for m in report.models],
        subject="Checkpoints: " + "; ".join(hashes),
        keywords=", ".join(["reportgen", "mechanistic interpretability", *hashes]),
    )
    return typeset(html, out_dir, attachments, report.generated_at)


def typeset(html: str, out_dir: Path, attachments: dict[str, bytes], generated_at: str) -> Path:
    """Write `out_dir/report.pdf` from `html` (relative links resolve in `out_dir`), with the
    `attachments` embedded and an identifier derived from them, so that the same inputs give the
    same bytes."""
    from weasyprint import HTML, Attachment
    from weasyprint.urls import URLFetcher

    when = _date(generated_at)
    files = [Attachment(file_obj=io.BytesIO(data), name=name, description=f"reportgen {name}", created=when,
                        modified=when, relationship="Data")
             for name, data in sorted(attachments.items())]
    identifier = hashlib.sha256(b"".join(attachments[n] for n in sorted(attachments))).hexdigest()[:32].encode()
    target = out_dir / "report.pdf"
    # Only local files and data: URIs (the figures' placeholders, images inside SVGs) may be read:
    # reports are built offline.
    fetcher = URLFetcher(allowed_protocols={"file", "data"}, fail_on_errors=True)
    with _quiet("weasyprint"):
        document = HTML(string=html, base_url=str(out_dir.resolve()) + "/", url_fetcher=fetcher).render()
        spots = figure_spots(document)
        typeset_pdf = document.write_pdf(attachments=files, pdf_identifier=identifier)
    write_file(target, place_figures(typeset_pdf, spots, out_dir))
    return target


@dataclass
class FigureSpot:
    """Where WeasyPrint laid out a figure's placeholder: page index, the figure's own PDF (relative
    to the site), its box's bottom-left corner in PDF points from the page's, and its width."""

    page: int
    path: str
    x: float
    y: float
    width: float


def figure_spots(document) -> list[FigureSpot]:
    """The placeholder images (`data-figure` attribute) of a rendered WeasyPrint document."""
    from weasyprint.formatting_structure.boxes import ReplacedBox

    pt = 0.75  # CSS px to PDF points
    spots = []
    for k, page in enumerate(document.pages):
        # WeasyPrint has no public API for box positions; placeholders=True includes positioned boxes
        for box in page._page_box.descendants(placeholders=True):
            if isinstance(box, ReplacedBox) and box.element is not None and box.element.get("data-figure"):
                top = box.content_box_y() + box.height
                spots.append(FigureSpot(k, box.element.get("data-figure"), box.content_box_x() * pt,
                                        page.height * pt - top * pt, box.width * pt))
    return spots


def place_figures(typeset_pdf: bytes, spots: list[FigureSpot], out_dir: Path) -> bytes:
    """`typeset_pdf` with each figure's own PDF (as matplotlib drew it) drawn into its spot as a form
    XObject: the PDF shows exactly the vector figure offered for download, and WeasyPrint does not
    redraw a few hundred SVG elements per figure (about 40% of its time on the demo report)."""
    import pypdf
    from pypdf.generic import ArrayObject, DictionaryObject, FloatObject, NameObject

    if not spots:
        return typeset_pdf
    writer = pypdf.PdfWriter(clone_from=pypdf.PdfReader(io.BytesIO(typeset_pdf)))
    wrapped = set()
    for n, spot in enumerate(spots):
        figure = pypdf.PdfReader(out_dir / spot.path).pages[0]
        form = _single_stream(figure).clone(writer)
        form.update({NameObject("/Type"): NameObject("/XObject"), NameObject("/Subtype"): NameObject("/Form"),
                     NameObject("/BBox"): ArrayObject(FloatObject(v) for v in figure.mediabox),
                     NameObject("/Resources"): figure["/Resources"].clone(writer)})
        name = NameObject(f"/ReportgenFigure{n}")
        page = writer.pages[spot.page]
        resources = page["/Resources"].get_object()
        if "/XObject" not in resources:
            resources[NameObject("/XObject")] = DictionaryObject()
        resources["/XObject"].get_object()[name] = writer._add_object(form)
        scale = spot.width / float(figure.mediabox.width)
        # WeasyPrint's page stream leaves a y-flipped matrix behind: it is wrapped in q ... Q first.
        contents = page["/Contents"].get_object()
        streams = list(contents) if isinstance(contents, ArrayObject) else [page.raw_get("/Contents")]
        draw = f"q {scale:.6f} 0 0 {scale:.6f} {spot.x:.3f} {spot.y:.3f} cm {name} Do Q"
        if page.indirect_reference not in wrapped:
            wrapped.add(page.indirect_reference)
            streams = [_stream(writer, "q"), *streams, _stream(writer, "Q")]
        page[NameObject("/Contents")] = ArrayObject([*streams, _stream(writer, draw)])
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def _stream(writer, operators: str):
    """An indirect content stream of `operators`, added to `writer`."""
    from pypdf.generic import DecodedStreamObject

    stream = DecodedStreamObject()
    stream.set_data(operators.encode())
    return writer._add_object(stream)


def _single_stream(page):
    """A page's content as one stream object (matplotlib writes one, kept compressed as it is)."""
    from pypdf.generic import ArrayObject, DecodedStreamObject

    contents = page["/Contents"].get_object()
    if not isinstance(contents, ArrayObject):
        return contents
    joined = DecodedStreamObject()
    joined.set_data(page.get_contents().get_data())
    return joined


@contextmanager
def _quiet(logger_name: str):
    """Silence a library's warnings (WeasyPrint's notes on screen-only CSS) for the duration."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
