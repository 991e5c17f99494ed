"""Errors users see (API.md, "Errors"): what is raised, and that it names the user's
``file.py:line`` and the construct, never a numba traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import gradjit as gj

HERE = os.path.basename(__file__)


def line_of(marker):
    """The line number of this file's line ending with ``# <marker>``."""
    with open(__file__) as f:
        for k, text in enumerate(f, 1):
            if text.rstrip().endswith(f"# <{marker}>"):
                return k
    raise LookupError(marker)


def where(marker):
    return f"{HERE}:{line_of(marker)}"


def assert_gradjit_error(excinfo):
    """A deliberate gradjit error, not numba's (no numba exception chained or shown)."""
    e = excinfo.value
    assert isinstance(e, gj.GradjitError), f"{type(e).__module__}.{type(e).__name__}: {e}"
    text = str(e)
    for numba_words in ("nopython", "Failed in", "numba.core", "TypingError", "During: "):
        assert numba_words not in text, text
    cause = e.__cause__ or (None if e.__suppress_context__ else e.__context__)
    while cause is not None:
        assert not type(cause).__module__.startswith("numba"), repr(cause)
        cause = cause.__cause__ or (None if cause.__suppress_context__ else cause.__context__)


# ---------------------------------------------------------------------------------------------
# Unsupported functions and constructs
# ---------------------------------------------------------------------------------------------


def uses_unique(x):
    y = x * 2
    return np.sum(np.unique(y))  # <unique>


def uses_fft(x):
    return np.sum(np.fft.fft(x).real)  # <fft>


def uses_unknown_method(x):
    return x.nonzero()  # <nonzero>


@pytest.mark.parametrize("fn, marker, name", [
    (uses_unique, "unique", "unique"),
    (uses_fft, "fft", "fft"),
    (uses_unknown_method, "nonzero", "nonzero"),
])
def test_unsupported_function_names_file_line_and_function(fn, marker, name):
    for transform in (gj.grad, gj.jit):
        with pytest.raises(gj.TraceError) as ei:
            transform(fn)(np.ones(3))
        assert where(marker) in str(ei.value)
        assert name in str(ei.value)
        assert_gradjit_error(ei)


def uses_try(x):
    try:  # <try>
        y = x * 2
    except ValueError:
        y = x
    return np.sum(y)


def uses_with(x):
    with open(os.devnull):  # <with>
        y = x * 2
    return np.sum(y)


COUNTER = 0


def uses_global(x):
    global COUNTER  # noqa: PLW0602  # <global>
    return np.sum(x)


def uses_class(x):
    class Local:  # <class>
        pass
    return np.sum(x)


def test_try_and_with_are_traced():
    # the try body is traced (no exception: no handler); a context manager is entered and
    # exited while tracing (tests/test_real_code_more.py has more)
    np.testing.assert_allclose(gj.grad(uses_try)(np.ones(3)), 2 * np.ones(3))
    np.testing.assert_allclose(gj.grad(uses_with)(np.ones(3)), 2 * np.ones(3))


@pytest.mark.parametrize("fn, marker, construct", [
    (uses_global, "global", "global"),
    (uses_class, "class", "class"),
])
def test_unsupported_statement_names_the_construct(fn, marker, construct):
    with pytest.raises(gj.TraceError) as ei:
        gj.grad(fn)(np.ones(3))
    assert where(marker) in str(ei.value)
    assert construct in str(ei.value)
    assert_gradjit_error(ei)


def boolean_mask(x):
    return np.sum(x[x > 0] + x)  # <mask>


def test_boolean_mask_indexing_is_a_trace_error():
    with pytest.raises(gj.TraceError) as ei:
        gj.grad(boolean_mask)(np.ones(3))
    assert where("mask") in str(ei.value) and "np.where" in str(ei.value)


def item_assignment(x):
    x[0] = 2.0 * x[1]  # <setitem>
    return np.sum(x)


def test_writing_into_an_argument_is_a_trace_error():
    # local arrays may be written into (tests/test_local_arrays.py); inputs may not
    with pytest.raises(gj.TraceError) as ei:
        gj.grad(item_assignment)(np.ones(3))
    assert where("setitem") in str(ei.value)
    assert "must not mutate their inputs" in str(ei.value)
    assert_gradjit_error(ei)


def user_raises(x):
    if x.shape[0] > 2:
        raise ValueError("too long")  # <raise>
    return np.sum(x)


def test_an_exception_the_function_raises_while_tracing():
    with pytest.raises(gj.TraceError) as ei:
        gj.grad(user_raises)(np.ones(3))
    assert where("raise") in str(ei.value) and "too long" in str(ei.value)


def test_source_not_in_a_file():
    # run by Python on tracers; a branch on a value there says what to do
    ns = {}
    exec("import numpy as np\ndef f(x):\n    return np.sum(x)\n"  # noqa: S102
         "def g(x):\n    if np.sum(x) > 0:\n        return x[0]\n    return x[1]\n", ns)
    np.testing.assert_allclose(gj.grad(ns["f"])(np.ones(2)), np.ones(2))
    with pytest.raises(gj.TraceError) as ei:
        gj.grad(ns["g"])(np.ones(2))
    assert "<string>:5" in str(ei.value) and "notebook cell" in str(ei.value)
    assert_gradjit_error(ei)


def calls_compiled(x):
    return np.sum(np.frompyfunc(abs, 1, 1)(x))  # <compiled>


def test_a_compiled_function_points_to_custom_vjp():
    with pytest.raises(gj.TraceError) as ei:
        gj.grad(calls_compiled)(np.ones(3))
    assert where("compiled") in str(ei.value) and "gj.custom_vjp" in str(ei.value)


# ---------------------------------------------------------------------------------------------
# grad of a non-scalar, argnums, has_aux
# ---------------------------------------------------------------------------------------------


def vector_valued(x):
    return x * 2


def test_grad_of_non_scalar_points_to_vjp_and_jacobian():
    with pytest.raises(gj.GradjitError) as ei:
        gj.grad(vector_valued)(np.ones(3))
    msg = str(ei.value)
    assert "scalar" in msg and "vjp" in msg and "jacobian" in msg
    assert_gradjit_error(ei)


def test_integer_argument_in_argnums_is_a_type_error():
    with pytest.raises(TypeError):
        gj.grad(lambda x, i: np.sum(x) * i, argnums=1)(np.ones(3), 3)
    with pytest.raises(TypeError):
        gj.grad(lambda x, i: np.sum(x[i]), argnums=(0, 1))(np.ones(3), np.array([0, 1]))
    with pytest.raises(TypeError):
        gj.value_and_grad(lambda n: n * 2.0)(4)


def test_argnums_out_of_range():
    with pytest.raises(gj.GradjitError):
        gj.grad(lambda x: np.sum(x), argnums=3)(np.ones(3))


def test_has_aux_needs_a_pair():
    with pytest.raises(gj.GradjitError) as ei:
        gj.grad(lambda x: np.sum(x), has_aux=True)(np.ones(3))
    assert "has_aux" in str(ei.value)


def test_bad_transform_arguments():
    with pytest.raises(TypeError):
        gj.grad(42)
    with pytest.raises(TypeError):
        gj.grad(lambda x: x, nonsense=True)
    with pytest.raises(TypeError):
        gj.jit(lambda x: x)("a string")


def returns_nothing(x):
    y = x * 2  # <none>


def returns_a_pair(x):
    return np.sum(x * x), x  # <pair>


def test_grad_of_a_function_returning_none_says_so():
    for transform in (gj.grad, gj.value_and_grad):
        with pytest.raises(gj.GradjitError, match="returned None") as ei:
            transform(returns_nothing)(np.ones(3))
        assert "shape" not in str(ei.value)


def test_grad_of_a_tuple_without_has_aux_is_an_error():
    for transform in (gj.grad, gj.value_and_grad):
        with pytest.raises(gj.GradjitError) as ei:  # not silently the gradient of out[0]
            transform(returns_a_pair)(np.ones(3))
        msg = str(ei.value)
        assert "scalar" in msg and "has_aux=True" in msg and "tuple" in msg, msg
        assert HERE in msg
    with pytest.raises(gj.GradjitError, match="has_aux=True"):
        gj.grad(lambda x: (x * x, x))(1.0)
    with pytest.raises(gj.GradjitError, match="has_aux=True"):
        gj.grad(lambda x: [x * x])(1.0)


def test_static_argnums_out_of_range():
    f = gj.jit(lambda x, y: x + y, static_argnums=(5,))
    with pytest.raises(gj.GradjitError, match=r"static_argnums=\(5,\) does not fit the 2 arg"):
        f(1.0, 2.0)
    with pytest.raises(gj.GradjitError, match="static_argnums"):
        gj.jit(lambda x, n: x * n, static_argnums=2)(1.0, 3)
    with pytest.raises(gj.GradjitError, match="static_argnums"):  # unchecked, it was ignored
        gj.jit(lambda x, n: x * n, static_argnums=-1)
    with pytest.raises(gj.GradjitError, match=r"argnums=\(0, 2\)"):  # argnums likewise
        gj.grad(lambda x, y: x * y, argnums=(0, 2))(1.0, 2.0)


# ---------------------------------------------------------------------------------------------
# Shape mismatches
# ---------------------------------------------------------------------------------------------


def static_mismatch(x):
    a = x.reshape(2, 3)
    b = x.reshape(3, 2)
    return np.sum(a + b)  # <static>


def runtime_mismatch(x, y):
    return np.sum(x + y)  # <runtime>


def matmul_mismatch(a, b):
    return np.sum(a @ b)  # <matmul>


def matmul_static_mismatch(x):
    return np.sum(x.reshape(2, 3) @ x.reshape(2, 3))  # <matmul-static>


def test_static_broadcast_mismatch_is_a_value_error_naming_shapes_and_line():
    with pytest.raises(ValueError) as ei:
        gj.grad(static_mismatch)(np.ones(6))
    assert isinstance(ei.value, gj.GradjitError)
    msg = str(ei.value)
    assert "(2, 3)" in msg and "(3, 2)" in msg and where("static") in msg
    assert_gradjit_error(ei)


def test_runtime_broadcast_mismatch_is_a_value_error_naming_the_line():
    for transform in (gj.grad, gj.jit):
        f = transform(runtime_mismatch)
        np.testing.assert_allclose(np.asarray(f(np.ones(3), np.ones(3))),
                                   np.ones(3) if transform is gj.grad else 6.0)
        with pytest.raises(ValueError) as ei:
            f(np.ones(3), np.ones(4))
        assert isinstance(ei.value, gj.GradjitError)
        assert where("runtime") in str(ei.value) and "broadcast" in str(ei.value)
        assert_gradjit_error(ei)


def test_runtime_broadcast_mismatch_names_the_actual_shapes():
    with pytest.raises(ValueError) as ei:
        gj.jit(runtime_mismatch)(np.ones(3), np.ones(4))
    assert "(3,)" in str(ei.value) and "(4,)" in str(ei.value)


def test_matmul_mismatch():
    with pytest.raises(ValueError) as ei:
        gj.grad(matmul_mismatch)(np.ones((2, 3)), np.ones((4, 2)))
    assert isinstance(ei.value, gj.GradjitError) and where("matmul") in str(ei.value)
    assert_gradjit_error(ei)
    with pytest.raises(ValueError) as ei:
        gj.grad(matmul_static_mismatch)(np.ones(6))
    assert isinstance(ei.value, gj.GradjitError)
    assert where("matmul-static") in str(ei.value) and "(2, 3)" in str(ei.value)


def static_index_out_of_bounds(x):
    return x.reshape(2, 3)[5, 0]  # <bounds>


def test_static_index_out_of_bounds():
    with pytest.raises(gj.GradjitError) as ei:
        gj.grad(static_index_out_of_bounds)(np.ones(6))
    assert where("bounds") in str(ei.value) and "out of bounds" in str(ei.value)


def bad_reshape(x):
    return np.sum(x.reshape(4, -1) * 2)  # <reshape>


def test_reshape_of_the_wrong_size():
    with pytest.raises((gj.GradjitError, ValueError)) as ei:
        gj.grad(bad_reshape)(np.ones(6))
    assert isinstance(ei.value, gj.GradjitError)
    assert where("reshape") in str(ei.value)


def unequal_split(x):
    a, b = np.split(x, 2)  # <split>
    return np.sum(a * b)


def test_unequal_split_at_run_time():
    f = gj.grad(unequal_split)
    np.testing.assert_allclose(f(np.arange(4.0)), [2.0, 3.0, 0.0, 1.0])
    with pytest.raises(ValueError) as ei:
        f(np.arange(5.0))
    assert isinstance(ei.value, gj.GradjitError)


def linalg_not_square(a):
    return np.linalg.det(a.reshape(2, 3))  # <det>


def test_linalg_of_a_non_square_matrix():
    with pytest.raises(ValueError) as ei:
        gj.grad(linalg_not_square)(np.ones(6))
    assert isinstance(ei.value, gj.GradjitError) and where("det") in str(ei.value)


def einsum_bad(x):
    return np.einsum("ij,jk->ik", x, x.reshape(2, 3))  # <einsum>


def test_einsum_size_mismatch():
    with pytest.raises(ValueError) as ei:
        gj.jit(einsum_bad)(np.ones((2, 3)))
    assert isinstance(ei.value, gj.GradjitError) and where("einsum") in str(ei.value)


def _read_at(x, i):
    return x[i] * 2.0


def _write_at(x, i):
    out = np.zeros(3)
    out[i] = x[0]
    return np.sum(out)


def _first_two(x):
    return x[0] * x[1]


@pytest.mark.parametrize("i", [3, 7, -4])
def test_runtime_index_out_of_bounds_is_an_index_error_naming_the_line(i):
    # numba does not check indices: without gradjit's check a write out of bounds corrupts memory
    for f, line in ((_read_at, "return x[i]"), (_write_at, "out[i] = x[0]")):
        with pytest.raises(gj.IndexOutOfBounds, match=r"test_errors\.py:\d+: index out of bounds") as e:
            gj.grad(f)(np.ones(3), i)
        assert isinstance(e.value, IndexError) and isinstance(e.value, gj.GradjitError)
        assert line in open(__file__).read().splitlines()[int(str(e.value).split(":")[1]) - 1]
    assert gj.grad(_read_at)(np.ones(3), -3).tolist() == [2.0, 0.0, 0.0]  # negative: as numpy
    assert gj.grad(_write_at)(np.arange(3.0), 2).tolist() == [1.0, 0.0, 0.0]


def test_static_index_into_an_axis_of_run_time_size_is_checked():
    g = gj.grad(_first_two)
    assert g(np.array([2.0, 3.0, 4.0])).tolist() == [3.0, 2.0, 0.0]
    with pytest.raises(gj.IndexOutOfBounds):
        g(np.zeros(0))


def test_vmap_checks_every_examples_index():
    f = gj.vmap(_read_at, in_axes=(None, 0))
    assert f(np.arange(3.0), np.array([0, 2, -1])).tolist() == [0.0, 4.0, 4.0]
    with pytest.raises(gj.IndexOutOfBounds):
        f(np.arange(3.0), np.array([0, 5]))


def _gather_sq(x, idx):
    return np.sum(x[idx] ** 2)


def _picked(z, y):  # the cross-entropy pattern: one entry per row, chosen by a label array
    return np.sum(z[np.arange(z.shape[0]), y] ** 2)


def test_integer_array_indices_are_checked():
    g = gj.grad(_gather_sq)
    x = np.arange(5.0)
    idx = np.array([0, 4, -1, -5, 2])  # negative indices count from the end, as in numpy
    want = np.zeros(5)
    np.add.at(want, idx, 2 * x[idx])
    np.testing.assert_array_equal(g(x, idx), want)
    np.testing.assert_array_equal(g(x, np.zeros(0, np.int64)), np.zeros(5))
    for bad in (np.array([0, 5]), np.array([-6]), np.array([[1, 2], [3, 7]])):
        with pytest.raises(gj.IndexOutOfBounds, match=r"test_errors\.py:\d+: integer-array index "
                                                      r"out of bounds for axis 0"):
            g(x, bad)
        with pytest.raises(IndexError):
            np.asarray(x)[bad]  # numpy agrees
    z = np.arange(12.0).reshape(4, 3)
    gz = gj.grad(_picked)
    want = np.zeros((4, 3))
    want[np.arange(4), [0, 2, 1, -1]] = 2 * z[np.arange(4), [0, 2, 1, -1]]
    np.testing.assert_array_equal(gz(z, np.array([0, 2, 1, -1])), want)
    with pytest.raises(gj.IndexOutOfBounds, match="axis 1"):
        gz(z, np.array([0, 2, 3, 1]))
    # np.arange(n) into an axis of size n is in bounds by construction: no check for it
    assert "axis 0" not in gz.lower(z, np.array([0, 2, 1, 1])).source


def test_vmap_checks_every_examples_index_array():
    f = gj.vmap(_gather_sq, in_axes=(None, 0))
    x = np.arange(4.0)
    idx = np.array([[0, 3], [-4, 1]])
    np.testing.assert_array_equal(f(x, idx), [np.sum(x[r] ** 2) for r in idx])
    with pytest.raises(gj.IndexOutOfBounds):
        f(x, np.array([[0, 3], [1, 4]]))


# ---------------------------------------------------------------------------------------------
# What a user's terminal shows: the message at the user's call, not gradjit's insides
# ---------------------------------------------------------------------------------------------

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# a compiled first call (the hot path is then set up), then a new signature that fails to
# trace: its miss on the hot path used to come chained in front of the error
NEW_SIGNATURE_FAILS = """\
import numpy as np
import gradjit as gj
def loss(x):
    return np.sum(x * x) if x.ndim == 1 else set([x])
f = gj.grad(loss)
f(np.ones(3))
f(np.ones((2, 2)))
"""

# an error gradjit raises while handling another (``from None``), at a first call
UNHASHABLE_STATIC = """\
import gradjit as gj
f = gj.jit(lambda x, opts: x, static_argnums=1)
f(1.0, [1, 2])
"""


def run_script(tmp_path, text, debug):
    script = tmp_path / "user_script.py"
    script.write_text(text)
    env = dict(os.environ, PYTHONPATH=REPO, GRADJIT_CACHE_DIR=str(tmp_path / "cache"))
    env.pop("GRADJIT_DEBUG", None)
    if debug:
        env["GRADJIT_DEBUG"] = "1"
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=300, check=False)
    assert proc.returncode == 1, proc.stderr
    tb = proc.stderr[proc.stderr.index("Traceback"):]  # (GRADJIT_DEBUG also logs compiles)
    return tb, str(script)


def gradjit_frames(tb):
    pkg = os.path.join(REPO, "gradjit") + os.sep
    return [ln for ln in tb.splitlines() if ln.strip().startswith("File") and pkg in ln]


def test_user_errors_print_a_short_traceback(tmp_path):
    tb, script = run_script(tmp_path, NEW_SIGNATURE_FAILS, debug=False)
    lines = tb.strip().splitlines()
    assert "During handling" not in tb and "direct cause" not in tb, tb
    assert not gradjit_frames(tb), tb
    assert len(lines) <= 6, tb
    assert f'File "{script}", line 7' in tb  # the user's call
    assert lines[-1].startswith("gradjit.errors.TraceError: ")
    assert f"{script}:4" in lines[-1] and "set()" in lines[-1]  # the user's line, the construct
    tb, script = run_script(tmp_path, UNHASHABLE_STATIC, debug=False)
    assert "During handling" not in tb and not gradjit_frames(tb), tb
    assert len(tb.strip().splitlines()) <= 6, tb
    assert "static arguments must be hashable" in tb


def test_gradjit_debug_keeps_the_chain_and_frames(tmp_path):
    tb, _ = run_script(tmp_path, UNHASHABLE_STATIC, debug=True)
    assert "During handling of the above exception" in tb, tb
    assert "TypeError" in tb and gradjit_frames(tb), tb
    assert tb.strip().splitlines()[-1].endswith("static arguments must be hashable, got list")


def test_vjp_cotangent_of_the_wrong_shape_is_refused():
    out, back = gj.vjp(lambda x: np.sin(x), np.ones(3))
    np.testing.assert_allclose(back(np.ones(3))[0], np.cos(np.ones(3)))
    with pytest.raises(gj.ShapeError, match=r"cotangent has shape \(4,\)"):
        back(np.ones(4))
