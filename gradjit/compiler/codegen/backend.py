"""The backend interface: what turns an optimised graph into the source of a module.

The schedule (``schedule.py``: fusion of a graph's equations into loop nests) is shared; a
backend lowers its items through its own rule tables and writes a module whose entry point
the runtime compiles or loads. Backends live in sibling modules of this one, imported only
when their target is first used (``backend_for``): the CUDA backend imports numba-cuda, which
``import gradjit`` never does.
"""

from __future__ import annotations

import importlib

from ...errors import GradjitError


class Backend:
    """A code generator for one or more targets. ``name``: the backend; ``targets``: the
    values of ``target=`` it serves; ``emit_source(graph, what, target)``: the text of a
    module for the optimised ``graph`` (``what`` names it in its header)."""

    name = None
    targets = ()

    def emit_source(self, graph, what, target):
        raise NotImplementedError


# target -> the module that defines its backend as ``BACKEND``
_MODULES = {"cpu": "cpu", "parallel": "cpu", "cuda": "cuda"}


def backend_for(target):
    """The backend serving ``target`` (its module imported at first use)."""
    name = _MODULES.get(target)
    if name is None:
        raise GradjitError(f"no backend for target {target!r}")
    mod = importlib.import_module(f"{__package__}.{name}")
    return mod.BACKEND
