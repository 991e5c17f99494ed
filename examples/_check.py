"""Shared by the example scripts: print a result next to its reference, stop on a mismatch.

References are computed without gradjit (closed forms, central differences, scipy), so a
wrong gradient makes the script exit with status 1.
"""

import sys

import numpy as np


def show(v, oneline=True):
    if isinstance(v, tuple):
        return "(" + ", ".join(show(x, oneline) for x in v) + ")"
    text = np.array2string(np.asarray(v), precision=5, suppress_small=True, threshold=10,
                           max_line_width=80)
    return " ".join(text.split()) if oneline else text


def _maxdiff(got, want):
    if isinstance(want, tuple):
        return max(_maxdiff(g, w) for g, w in zip(got, want))
    return float(np.max(np.abs(np.asarray(got, float) - np.asarray(want, float)), initial=0.0))


def _close(got, want, rtol, atol):
    if isinstance(want, tuple):
        return (isinstance(got, tuple) and len(got) == len(want)
                and all(_close(g, w, rtol, atol) for g, w in zip(got, want)))
    got, want = np.asarray(got, dtype=float), np.asarray(want, dtype=float)
    return got.shape == want.shape and np.allclose(got, want, rtol=rtol, atol=atol)


def check(label, got, want, rtol=1e-7, atol=1e-9, show_value=True):
    """Print ``label``, gradjit's value and the reference; exit with status 1 if they differ.

    A value too long for one line is printed once, under the label (not with
    ``show_value=False``), with its largest difference from the reference.
    """
    ok = _close(got, want, rtol, atol)
    mark = "ok  " if ok else "FAIL"
    line = f"  {mark} {label}: {show(got)}"
    if len(line) + len(show(want)) < 100:
        print(f"{line}   (expected {show(want)})")
    elif ok:
        print(f"  {mark} {label} (max |error| "
              f"{_maxdiff(got, want):.1e})")
        if show_value:
            print("       " + show(got, oneline=False).replace("\n", "\n       "))
    else:
        print(f"  {mark} {label}\n       gradjit:  {show(got)}\n       expected: {show(want)}")
    if not ok:
        print(f"FAIL: {label} (rtol={rtol}, atol={atol})")
        sys.exit(1)


def section(title):
    print(f"\n== {title}")


def central_grad(f, x, h=1e-6):
    """d f / d x of a scalar function by central differences (x a float or an array)."""
    x = np.asarray(x, dtype=float)
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[i] = h
        g[i] = (f(x + e) - f(x - e)) / (2 * h)
    return g


def central_jacobian(f, x, h=1e-6):
    """The Jacobian of f at x by central differences, shape ``f(x).shape + x.shape``."""
    x = np.asarray(x, dtype=float)
    out = np.asarray(f(x))
    J = np.zeros(out.shape + x.shape)
    for i in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[i] = h
        J[(...,) + i] = (np.asarray(f(x + e)) - np.asarray(f(x - e))) / (2 * h)
    return J


def print_ir(text, indent="    "):
    """Print gradjit's IR (``.lower(...).optimized_ir``) indented, source paths cut to the file."""
    import re
    text = re.sub(r"/[^\s'()]*/([^/\s'()]+\.py:\d+)", r"\1", text)
    print(indent + text.rstrip().replace("\n", "\n" + indent))


def central_hessian(f, x, h=1e-4):
    """The Hessian of a scalar function at x by central second differences."""
    x = np.asarray(x, dtype=float)
    H = np.zeros(x.shape + x.shape)
    E = np.eye(x.size).reshape((x.size,) + x.shape) * h
    for a, i in enumerate(np.ndindex(x.shape)):
        for b, j in enumerate(np.ndindex(x.shape)):
            H[i + j] = (f(x + E[a] + E[b]) - f(x + E[a] - E[b]) - f(x - E[a] + E[b])
                        + f(x - E[a] - E[b])) / (4 * h * h)
    return H
