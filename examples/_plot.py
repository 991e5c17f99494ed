"""Figures for the example scripts. matplotlib is an optional extra (``pip install
gradjit[examples]``), imported only here: without it the examples run and skip their plots.

Figures go to ``examples/figures/`` (git-ignored), or to ``$GRADJIT_FIGURES`` when set.
"""

import os

FIGURES = os.environ.get("GRADJIT_FIGURES") or os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "figures")


def pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend, or None when it is missing."""
    try:
        import matplotlib
    except ImportError:
        print("plot skipped (pip install gradjit[examples])")
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save(fig, name):
    """Write ``fig`` to the figures folder as ``name`` and close it."""
    import matplotlib.pyplot as plt
    os.makedirs(FIGURES, exist_ok=True)
    path = os.path.join(FIGURES, name)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    print(f"figure: {os.path.relpath(path)}")
    return path
