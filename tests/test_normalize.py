"""The early-exit pass (compiler/normalize.py): break, continue and return made flag variables.

Each function below is run twice in plain Python, as written and as rewritten by the pass, on
inputs that take every path; the results must agree. Then a few go through gradjit on traced
values (the exits depend on argument values), checked against plain numpy and central
differences.
"""

import ast
import inspect
import textwrap

import numpy as np
import pytest

import gradjit as gj
from gradjit.compiler.normalize import normalize


def first_over(xs, t):
    for x in xs:
        if x > t:
            return x
    return -1.0


def sum_until_negative(xs):
    s = 0.0
    for x in xs:
        if x < 0:
            break
        s += x
    return s


def skip_odd_positions(xs):
    s = 0.0
    for i in range(len(xs)):
        if i % 2:
            continue
        s += xs[i] * (i + 1)
    return s


def loop_else(xs, t):
    for x in xs:
        if x == t:
            found = 1
            break
    else:
        found = 0
    return found


def nested_break(xs, t):
    total = 0.0
    for x in xs:
        for k in range(4):
            if k * x > t:
                break
            total += k * x
        if total > 10 * t:
            return total
    return -total


def while_with_exits(x, t):
    n = 0
    while x < t:
        n += 1
        if n > 50:
            return -1.0
        if n % 3 == 0:
            x = x * 1.5
            continue
        x = x + 1.0
    return x + n


def returns_in_branches(x):
    if x > 2:
        return x * 2
    elif x > 0:
        y = x + 1
    else:
        return -x
    return y * y


def no_early_exit(xs):
    s = 0.0
    for x in xs:
        s += x
    return s


CASES = [
    (first_over, [([1.0, 3.0, 5.0], 2.0), ([1.0, 2.0], 5.0), ([], 0.0)]),
    (sum_until_negative, [([1.0, 2.0, -1.0, 4.0],), ([1.0, 2.0],), ([-1.0],)]),
    (skip_odd_positions, [([1.0, 2.0, 3.0, 4.0, 5.0],), ([],)]),
    (loop_else, [([1, 2, 3], 2), ([1, 2, 3], 7)]),
    (nested_break, [([1.0, 2.0, 3.0], 2.0), ([0.5, 0.25], 0.1), ([5.0, 6.0], 0.5)]),
    (while_with_exits, [(0.0, 10.0), (20.0, 10.0), (-1e6, 1e9)]),
    (returns_in_branches, [(3.0,), (1.0,), (-2.0,)]),
]


def _rewritten(fun):
    tree = ast.parse(textwrap.dedent(inspect.getsource(fun)))
    fn = tree.body[0]
    new = normalize(fn)
    mod = ast.Module(body=[new], type_ignores=[])
    ast.fix_missing_locations(mod)
    env = {}
    exec(compile(mod, f"<normalized {fun.__name__}>", "exec"), env)
    return env[fun.__name__], fn, new


@pytest.mark.parametrize("fun,inputs", CASES, ids=[f.__name__ for f, _ in CASES])
def test_rewritten_function_computes_what_the_original_does(fun, inputs):
    new_fun, before, after = _rewritten(fun)
    assert after is not before  # it had exits to rewrite
    # no early exit is left: at most the final return
    rest = [n for n in ast.walk(after) if isinstance(n, (ast.Break, ast.Continue, ast.Return))]
    assert rest == [after.body[-1]] and isinstance(rest[0], ast.Return)
    for args in inputs:
        assert new_fun(*args) == fun(*args), args


def test_a_function_without_early_exits_is_handed_back_unchanged():
    _, before, after = _rewritten(no_early_exit)
    assert after is before


def test_rewritten_nodes_keep_the_users_lines():
    _, before, after = _rewritten(sum_until_negative)
    lines = {n.lineno for n in ast.walk(before) if hasattr(n, "lineno")}
    for n in ast.walk(after):
        if isinstance(n, ast.stmt):
            assert n.lineno in lines


# ---- through gradjit: exits that depend on argument values ---------------------------------


def weighted_until_large(x):
    s = 0.0
    for i in range(x.shape[0]):
        if s > 4.0:
            break
        if x[i] < 0:
            continue
        s += x[i] ** 2 * (i + 1)
    return s


def grow_and_return(x):
    y = x
    for _ in range(20):
        if np.sum(y * y) > 50.0:
            return np.sum(np.sin(y))
        y = y * 1.3
    return np.sum(y)


def _fd(f, x, h=1e-6):
    g = np.zeros_like(x)
    for i in range(x.size):
        e = np.zeros_like(x)
        e[i] = h
        g[i] = (f(x + e) - f(x - e)) / (2 * h)
    return g


@pytest.mark.parametrize("f", [weighted_until_large, grow_and_return])
def test_value_dependent_exits_under_jit_and_grad(f):
    for x in (np.array([0.3, -0.7, 0.9, 1.1, 2.0]), np.array([0.2, 0.1, -0.3]),
              np.array([3.0, 0.5])):
        np.testing.assert_allclose(gj.jit(f)(x), f(x), rtol=1e-12)
        np.testing.assert_allclose(gj.grad(f)(x), _fd(f, x), rtol=1e-6, atol=1e-8)
