"""The render stage: the static site and the PDF report, made from a results `Report` alone.

No torch here: `reportgen render RESULTS_DIR` re-renders a saved report without a model. This
package file imports nothing, so no module of the stage imports another through it: the entry
points are `reportgen.render.report` (a model report: `render_site`, `site_is_current`) and
`reportgen.render.study` (a sweep's study report).
"""
