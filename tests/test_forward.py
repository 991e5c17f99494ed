"""Forward mode (``gj.jvp``, ``gj.jacfwd``) and ``gj.checkpoint``.

Forward mode is an IR transform (compiler/forward.py) driven by each primitive's tangent rule
(test_primitives.py checks every rule on its own); here: the public transforms against
reverse mode and central differences, through branches and loops, Hessian-vector products
``jvp(grad(f))`` against ``hessian(f) @ v``, float32, pytrees and errors. Checkpointed
functions and loops give the gradients of the unchecked ones while the backward pass keeps
fewer forward values.
"""

from __future__ import annotations

import numpy as np
import pytest

import gradjit as gj
from gradjit.compiler.ir import subgraphs

RNG = np.random.default_rng(0)


def central(f, x, v, eps=1e-6):
    return (np.asarray(f(x + eps * v)) - np.asarray(f(x - eps * v))) / (2 * eps)


def mixed(x):
    return np.sin(x) * np.exp(-x ** 2) + np.tanh(x).sum() * x


def with_if(x):
    if np.sum(x) > 1.0:
        y = np.exp(x) * x
    else:
        y = np.sin(x) * 3.0
    return y


def with_for(x):
    y = x
    for i in range(x.shape[0]):
        y = y * np.cos(x[i]) + x[i] ** 2
    return y


def with_while(b):
    while np.linalg.norm(b) < 100.0:
        b = b * 1.5 + np.sin(b)
    return b


def matrix_ops(x):
    a = np.outer(x, x) + np.eye(x.shape[0]) * 3.0
    return np.linalg.solve(a, x) + np.linalg.inv(a) @ np.cumsum(x) + x[::2].sum() * x[1:].max()


FUNS = [mixed, with_if, with_for, with_while, matrix_ops]


@pytest.mark.parametrize("f", FUNS, ids=lambda f: f.__name__)
def test_jvp_against_central_differences_and_jacobian(f):
    x = RNG.uniform(0.2, 0.9, 5)
    v = RNG.standard_normal(5)
    out, t = gj.jvp(f, (x,), (v,))
    np.testing.assert_allclose(out, f(x), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(t, central(f, x, v), rtol=1e-6, atol=1e-7)
    J = gj.jacobian(f)(x)
    np.testing.assert_allclose(t, J @ v, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(gj.jacfwd(f)(x), J, rtol=1e-10, atol=1e-10)


def test_if_takes_both_branches():
    small, big = np.full(3, 0.1), np.full(3, 0.9)
    for x in (small, big):
        np.testing.assert_allclose(gj.jacfwd(with_if)(x), gj.jacobian(with_if)(x), rtol=1e-12)


def test_forward_loops_keep_no_tape():
    """The tangent is carried with the loop's values: no tape in the forward-mode kernel."""
    x = np.linspace(0.1, 0.9, 4)
    low = gj.jacfwd(with_for).lower(x)
    names, todo = set(), [low.optimized]
    while todo:
        g = todo.pop()
        for e in g.eqns:
            names.add(e.prim.name)
            todo.extend(subgraphs(e))
    assert "for" in names and not any(n.startswith("tape") for n in names)


def test_several_arguments_pytrees_and_argnums():
    def f(p, x):
        return np.tanh(p["w"] @ x + p["b"]) * p["s"]
    p = {"w": RNG.standard_normal((3, 4)), "b": RNG.standard_normal(3), "s": 1.5}
    x = RNG.standard_normal(4)
    tp = {"w": RNG.standard_normal((3, 4)), "b": RNG.standard_normal(3), "s": 0.5}
    tx = RNG.standard_normal(4)
    out, t = gj.jvp(f, (p, x), (tp, tx))
    eps = 1e-6
    plus = f({k: p[k] + eps * tp[k] for k in p}, x + eps * tx)
    minus = f({k: p[k] - eps * tp[k] for k in p}, x - eps * tx)
    np.testing.assert_allclose(out, f(p, x), rtol=1e-12)
    np.testing.assert_allclose(t, (plus - minus) / (2 * eps), rtol=1e-6, atol=1e-8)
    jf = gj.jacfwd(f, argnums=(0, 1))(p, x)
    jr = gj.jacobian(f, argnums=(0, 1))(p, x)
    for k in ("w", "b", "s"):
        np.testing.assert_allclose(jf[0][k], jr[0][k], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(jf[1], jr[1], rtol=1e-10, atol=1e-12)


def test_scalar_input_and_many_outputs():
    """Forward mode's good case: one input, many outputs (a 1 -> 1000 map)."""
    def f(s, t):
        return np.sin(s * t) + s ** 2
    t = np.linspace(0.0, 1.0, 1000)
    np.testing.assert_allclose(gj.jacfwd(f)(0.7, t), t * np.cos(0.7 * t) + 1.4, rtol=1e-12)
    out, tan = gj.jvp(f, (0.7, t), (1.0, np.zeros_like(t)))
    np.testing.assert_allclose(tan, t * np.cos(0.7 * t) + 1.4, rtol=1e-12)


def test_float32():
    x = np.linspace(0.1, 0.9, 6).astype(np.float32)
    v = np.ones(6, np.float32)
    out, t = gj.jvp(mixed, (x,), (v,))
    assert out.dtype == np.float32 and t.dtype == np.float32
    want = gj.jacobian(mixed)(x.astype(np.float64)) @ np.ones(6)
    np.testing.assert_allclose(t, want, rtol=1e-5, atol=1e-5)
    J = gj.jacfwd(mixed)(x)
    assert J.dtype == np.float32
    np.testing.assert_allclose(J, gj.jacobian(mixed)(x), rtol=1e-5, atol=1e-6)


def log_density(x):
    return -0.5 * np.sum(x ** 2) - np.sum(np.log1p(np.exp(-x))) + np.sum(np.sin(x) * x[::-1])


def loop_energy(x):
    s = 0.0
    for i in range(x.shape[0] - 1):
        s = s + (x[i + 1] - x[i] ** 2) ** 2 + np.cos(x[i]) * x[i + 1]
    return s


@pytest.mark.parametrize("f", [log_density, loop_energy], ids=lambda f: f.__name__)
def test_hessian_vector_products(f):
    x = RNG.uniform(-1, 1, 6)
    v = RNG.standard_normal(6)
    g, hv = gj.jvp(gj.grad(f), (x,), (v,))
    np.testing.assert_allclose(g, gj.grad(f)(x), rtol=1e-12)
    np.testing.assert_allclose(hv, gj.hessian(f)(x) @ v, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(gj.jacfwd(gj.grad(f))(x), gj.hessian(f)(x), rtol=1e-9, atol=1e-10)


def test_hvp_is_one_kernel_and_cached():
    x = RNG.uniform(-1, 1, 50)
    v = RNG.standard_normal(50)
    hvp = gj.jvp  # the same call twice: the second finds its kernel in memory

    def f(x):
        return np.sum(np.cos(x) * x ** 3)
    before = gj.cache_info().compiles
    hvp(gj.grad(f), (x,), (v,))
    mid = gj.cache_info().compiles
    assert mid - before <= 1
    hvp(gj.grad(f), (x,), (2 * v,))
    hvp(gj.grad(f), (np.ones(7),), (np.ones(7),))  # a new size: no recompile
    assert gj.cache_info().compiles == mid


def test_jvp_inside_traced_code():
    """gj.jvp composes: inside gj.jit, and reverse over forward (grad of a directional
    derivative)."""
    v = np.array([0.3, -0.2, 0.5])

    def dir_deriv(x):
        return gj.jvp(log_density, (x,), (v,))[1]
    x = RNG.uniform(-1, 1, 3)
    want = gj.grad(log_density)(x) @ v
    np.testing.assert_allclose(gj.jit(dir_deriv)(x), want, rtol=1e-12)
    np.testing.assert_allclose(gj.grad(dir_deriv)(x), gj.hessian(log_density)(x) @ v,
                               rtol=1e-9, atol=1e-12)


def test_custom_vjp_and_stop_gradient_in_forward_mode():
    @gj.custom_vjp
    def softplus(x):
        return np.log1p(np.exp(x))

    def fwd(x):
        return softplus(x), (x,)

    def bwd(res, g):
        return (g * 0.0,)  # a deliberately wrong rule: forward mode goes through fwd
    softplus.defvjp(fwd, bwd)
    x = np.linspace(-1, 1, 4)
    _, t = gj.jvp(lambda x: softplus(x) * 2.0, (x,), (np.ones(4),))
    np.testing.assert_allclose(t, 2.0 / (1.0 + np.exp(-x)), rtol=1e-12)
    _, t = gj.jvp(lambda x: gj.stop_gradient(x ** 2) * x, (x,), (np.ones(4),))
    np.testing.assert_allclose(t, x ** 2, rtol=1e-12)


def test_errors():
    x = np.ones(3)
    with pytest.raises(gj.ShapeError, match="tangent of shape"):
        gj.jvp(np.sin, (x,), (np.ones(4),))
    with pytest.raises(gj.GradjitError, match="primals but"):
        gj.jvp(np.sin, (x,), ())
    with pytest.raises(TypeError, match="tuples"):
        gj.jvp(np.sin, x, x)
    with pytest.raises(TypeError, match="integer"):
        gj.jacfwd(lambda n: n * 2.0)(np.arange(3))


# ---- gj.checkpoint ----------------------------------------------------------------------------


def block(x, w):
    h = np.tanh(x * w)
    return np.sin(h) * h + np.exp(-h)


def kept_for_backward(graph):
    """Values computed before the first recomputation and read after it: what the forward
    pass keeps for the backward pass (the reverse pass follows the forward in the IR)."""
    eqns = list(graph.eqns)
    start = next((k for k, e in enumerate(eqns) if e.prim.name == "recompute"), None)
    if start is None:  # unchecked: the backward starts at the output's seed
        start = next(k for k, e in enumerate(eqns) if e.prim.name == "mul" and
                     any(getattr(a, "value", None) == 2.0 for a in e.inputs)) + 1
    defined = {v for e in eqns[:start] for v in e.outputs}
    return {a for e in eqns[start:] for a in e.inputs if a in defined}


def test_checkpoint_recomputes_and_matches():
    def f(x, w):
        return np.sum(gj.checkpoint(block)(x, w) ** 2)

    def f0(x, w):
        return np.sum(block(x, w) ** 2)
    x, w = np.linspace(0.1, 1, 5), 0.7
    for a, b in zip(gj.grad(f, argnums=(0, 1))(x, w), gj.grad(f0, argnums=(0, 1))(x, w)):
        np.testing.assert_allclose(a, b, rtol=1e-12)
    np.testing.assert_allclose(gj.hessian(f)(x, w), gj.hessian(f0)(x, w), rtol=1e-10)
    _, t = gj.jvp(f, (x, w), (np.ones(5), 0.0))
    np.testing.assert_allclose(t, gj.grad(f0)(x, w).sum(), rtol=1e-12)
    assert gj.checkpoint(block)(x, w) == pytest.approx(block(x, w))
    ck = gj.grad(f).lower(x, w).optimized
    plain = gj.grad(f0).lower(x, w).optimized
    assert sum(e.prim.name == "tanh" for e in ck.eqns) == 2  # recomputed
    assert sum(e.prim.name == "tanh" for e in plain.eqns) == 1
    # the backward pass reads the region's inputs and the cotangent only
    assert len(kept_for_backward(ck)) < len(kept_for_backward(plain))
    assert len(kept_for_backward(ck)) <= 1


def test_checkpoint_closure_over_traced_values_gets_gradients():
    def f(x, w):
        g = gj.checkpoint(lambda y: np.sin(y * w) * w)
        return np.sum(g(x))
    x, w = np.linspace(0.1, 1, 4), 1.3
    got = gj.grad(f, argnums=(0, 1))(x, w)
    want = gj.grad(lambda x, w: np.sum(np.sin(x * w) * w), argnums=(0, 1))(x, w)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-12)


def _tapes(low):
    out, todo = [], [low.optimized]
    while todo:
        g = todo.pop()
        for e in g.eqns:
            todo.extend(subgraphs(e))
            if e.prim.name == "tape_new":
                out.append(e.outputs[0].aval)
    return out


def euler(x0, n):
    x = x0
    for _ in range(n):
        x = gj.checkpoint(step)(x)
    return np.sum(x ** 2)


def euler_plain(x0, n):
    x = x0
    for _ in range(n):
        x = step(x)
    return np.sum(x ** 2)


def step(x):
    h = np.tanh(x)
    return x + 0.01 * (np.sin(h) * h - x)


def test_checkpointed_loop_tapes_only_the_carry():
    x = np.linspace(0.1, 1.0, 100)
    g, g0 = gj.grad(euler)(x, 200), gj.grad(euler_plain)(x, 200)
    np.testing.assert_allclose(g, g0, rtol=1e-12)
    tapes = _tapes(gj.grad(euler).lower(x, 200))
    # one float64 value of the state's shape per step: 8 bytes x 100 per step
    assert len(tapes) == 1 and tapes[0].dtype == "tape:float64" and len(tapes[0].shape) == 1
    assert len(_tapes(gj.grad(euler_plain).lower(x, 200))) == 1


def test_checkpoint_options():
    with pytest.raises(NotImplementedError, match="binomial"):
        gj.checkpoint(step, policy="binomial", snapshots=4)
    assert gj.checkpoint()(step) is not None
