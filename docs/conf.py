"""Sphinx configuration for the customer-patch documentation.

Build (the same command ``.ci/run`` runs)::

    python -m sphinx -W --keep-going -n -b html docs docs/_build/html
"""

from __future__ import annotations

import builtins
import importlib
import pkgutil
from typing import Any

from docutils import nodes
from sphinx import addnodes
from sphinx.application import Sphinx
from sphinx.pycode import ModuleAnalyzer

import customer_patch

project = "customer-patch"
author = "The customer-patch team"
copyright = "the customer-patch team"
release = customer_patch.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
]

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

html_theme = "furo"
html_title = "customer-patch"

myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_format = "short"

# Every cross-reference must resolve (-n).  Without intersphinx (the build
# runs offline) the standard library and third-party types cannot, so those,
# and only those, are let through.
nitpicky = True
nitpick_ignore_regex = [
    # The standard library.
    (r"py:.*", r"(collections\.abc|typing|datetime|uuid|types|enum|random)\..*"),
    # Third-party packages.
    (r"py:.*", r"(aiohttp|attrs|multidict|yarl|pytest|_pytest|pytest_asyncio)(\..*)?"),
]
nitpick_ignore = [
    # A type variable of the registry's decorator overloads.
    ("py:class", "customer_patch._registry.S"),
]


# -- docstrings of public constants ----------------------------------------------
#
# ``customer_patch`` re-exports constants such as UNSET and RETRY_STATUSES
# from private modules.  autodoc looks for their docstrings in the module it
# documents, finds none, and falls back to the docstring of the value's type
# (``frozenset()``...).  Read each one where it is defined instead, so the
# reference shows what the source says.


def _public_attribute_docs() -> dict[str, list[str]]:
    docs: dict[str, list[str]] = {}
    modules = [
        importlib.import_module(f"customer_patch.{info.name}")
        for info in pkgutil.iter_modules(customer_patch.__path__)
        if info.name.startswith("_") and not info.name.startswith("__")
    ]
    for module in modules:
        found = ModuleAnalyzer.for_module(module.__name__).find_attr_docs()
        for (scope, attr), lines in found.items():
            if scope or attr not in customer_patch.__all__:
                continue
            if getattr(customer_patch, attr) is getattr(module, attr, None):
                docs[f"customer_patch.{attr}"] = list(lines)
    return docs


_ATTRIBUTE_DOCS: dict[str, list[str]] = {}


def _fix_constant_docs(
    app: Sphinx, what: str, name: str, obj: Any, options: Any, lines: list[str]
) -> None:
    if what == "data" and name in _ATTRIBUTE_DOCS:
        lines[:] = _ATTRIBUTE_DOCS[name]


# -- type references ----------------------------------------------------------
#
# Without intersphinx a built-in such as ``type`` in ``type[FakeProvider]``
# has nothing to link to, and Sphinx's search would offer instead whatever
# attribute shares its name (``Customer.type``): built-ins are plain text.
#
# The tri-state alias ``Unset`` reaches signatures expanded, as
# ``Literal[_UnsetType.UNSET]``; its one member is the public UNSET, so it is
# shown (and linked, where Sphinx made a reference) under that name.

_BUILTINS = frozenset(name for name in dir(builtins) if not name.startswith("_"))
_UNSET_MEMBER = "customer_patch._model._UnsetType.UNSET"
_UNSET_TEXT = "_UnsetType.UNSET"


def _fix_type_references(app: Sphinx, doctree: nodes.document) -> None:
    for ref in list(doctree.findall(addnodes.pending_xref)):
        if ref.get("refdomain") != "py":
            continue
        if ref.get("reftarget") in _BUILTINS:
            ref.replace_self(ref.children or nodes.Text(ref["reftarget"]))
        elif ref.get("reftarget") == _UNSET_MEMBER:
            ref["reftype"], ref["reftarget"] = "data", "customer_patch.UNSET"
    for text in list(doctree.findall(nodes.Text)):
        if _UNSET_TEXT in text:
            text.parent.replace(text, nodes.Text(text.replace(_UNSET_TEXT, "UNSET")))


def setup(app: Sphinx) -> None:
    _ATTRIBUTE_DOCS.update(_public_attribute_docs())
    app.connect("autodoc-process-docstring", _fix_constant_docs)
    app.connect("doctree-read", _fix_type_references)
