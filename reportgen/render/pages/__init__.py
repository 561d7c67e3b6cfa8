"""The site's pages, one module per kind: `index` (the overview), `model` (a model's chapter),
`example` (one analysed example with its attention viewer), `comparison` and `provenance`; `shared`
holds the blocks more than one kind shows. Each page is data (`site.Page`); nothing is written here.
"""
