"""Sphinx configuration: autosummary API pages, numpydoc docstrings, accessor support."""

import sphinx_autosummary_accessors

import pytyche

project = "pytyche"
author = "the pytyche developers"
release = version = pytyche.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.viewcode",
    "numpydoc",
    "myst_parser",
    "sphinx_autosummary_accessors",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
templates_path = ["_templates", sphinx_autosummary_accessors.templates_path]
exclude_patterns = ["_build", "generated/**.ipynb"]
autosummary_generate = True
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
myst_heading_anchors = 3
html_theme = "pydata_sphinx_theme"
html_title = "pytyche"
