"""Studies: many models, seeds and training snapshots in one report (`reportgen sweep`).

`config` reads and validates a sweep file, `jobs` holds the three jobs (train, analyse, render) as
functions of plain data, `engine` runs them on local worker processes or a Ray cluster, and `run`
plans, resumes, retries and records them, then renders the study (reportgen.results.study,
reportgen.render.study).
"""
