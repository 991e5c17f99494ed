"""The CUDA target under numba-cuda's simulator (NUMBA_ENABLE_CUDASIM=1, set by make test and
tests/conftest.py before numba is imported): values against closed forms, central differences
and the CPU target. The simulator's launch configuration is small (kernels/cuda.py: 32 threads
a block, at most 3 blocks), so sizes of a few hundred already exercise partial blocks,
several blocks and grid-stride loops."""

import numpy as np
import pytest

pytest.importorskip("numba_cuda")

import gradjit as gj  # noqa: E402

RNG = np.random.default_rng(7)


def poly(x):
    return np.sum(x ** 2 + x ** 3 + 5)


@pytest.mark.parametrize("n", [5, 32, 97, 400])
def test_elementwise_gradient_closed_form(n):
    x = RNG.standard_normal(n)
    g = gj.grad(poly, target="cuda")(x)
    assert type(g) is np.ndarray and g.dtype == np.float64  # numpy in: numpy out
    np.testing.assert_allclose(g, 2 * x + 3 * x ** 2, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("n", [3, 31, 32, 33, 97, 200])
def test_reductions_any_size(n):
    x = RNG.standard_normal(n)
    for fn in (np.sum, np.mean, np.max):
        got = gj.jit(lambda x, fn=fn: fn(x), target="cuda")(x)
        np.testing.assert_allclose(got, fn(x), rtol=1e-13, atol=1e-14)
    v, g = gj.value_and_grad(lambda x: np.mean(x * x), target="cuda")(x)
    np.testing.assert_allclose(v, np.mean(x * x), rtol=1e-13)
    np.testing.assert_allclose(g, 2 * x / n, rtol=1e-13)


def test_max_gradient_goes_to_the_argmax():
    x = RNG.standard_normal(70)
    g = gj.grad(lambda x: np.max(x), target="cuda")(x)
    want = np.zeros(70)
    want[np.argmax(x)] = 1.0
    np.testing.assert_array_equal(g, want)


def mse(w, X, y):
    return np.mean((X @ w - y) ** 2)


def test_linear_model_mse_against_cpu_and_closed_form():
    X, w, y = RNG.standard_normal((150, 6)), RNG.standard_normal(6), RNG.standard_normal(150)
    v, g = gj.value_and_grad(mse, target="cuda")(w, X, y)
    vc, gc = gj.value_and_grad(mse, target="cpu")(w, X, y)
    np.testing.assert_allclose(v, vc, rtol=1e-13)
    np.testing.assert_allclose(g, gc, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(g, 2 * X.T @ (X @ w - y) / 150, rtol=1e-12)


def xent(W, X, labels):
    z = X @ W
    z = z - np.max(z, axis=1, keepdims=True)
    lse = np.log(np.sum(np.exp(z), axis=1))
    return np.mean(lse - z[np.arange(X.shape[0]), labels])


def test_softmax_cross_entropy_against_cpu():
    X, W = RNG.standard_normal((90, 5)), RNG.standard_normal((5, 4))
    labels = RNG.integers(0, 4, 90)
    v, g = gj.value_and_grad(xent, target="cuda")(W, X, labels)
    vc, gc = gj.value_and_grad(xent, target="cpu")(W, X, labels)
    np.testing.assert_allclose(v, vc, rtol=1e-13)
    np.testing.assert_allclose(g, gc, rtol=1e-12, atol=1e-14)
    assert g.shape == W.shape


def bfield(p):
    x, y, z = p[0], p[1], p[2]
    return np.stack([x ** 3 - y ** 2, y ** 2 + z ** 2, z ** 3 - x ** 2])


def test_vmap_jacobian_of_the_b_field_closed_form():
    P = RNG.standard_normal((130, 3))
    J = gj.vmap(gj.jacobian(bfield), target="cuda")(P)
    x, y, z = P.T
    want = np.zeros((130, 3, 3))
    want[:, 0, 0], want[:, 0, 1] = 3 * x ** 2, -2 * y
    want[:, 1, 1], want[:, 1, 2] = 2 * y, 2 * z
    want[:, 2, 0], want[:, 2, 2] = -2 * x, 3 * z ** 2
    np.testing.assert_allclose(J, want, rtol=1e-13, atol=1e-13)


def grow(a):
    """A value-dependent loop: a different trip count per batch item."""
    b = a
    while b * b < 100.0:
        b = b * 1.5
    return b * a


def test_vmapped_while_loop_and_its_gradient():
    A = RNG.uniform(0.3, 3.0, 75)
    out = gj.vmap(grow, target="cuda")(A)
    np.testing.assert_allclose(out, [grow(a) for a in A], rtol=1e-13)
    g = gj.vmap(gj.grad(grow), target="cuda")(A)
    np.testing.assert_allclose(g, gj.vmap(gj.grad(grow), target="cpu")(A), rtol=1e-13)
    h = 1e-6  # central differences (the trip count does not change within +-h here)
    fd = np.array([(grow(a + h) - grow(a - h)) / (2 * h) for a in A])
    np.testing.assert_allclose(g, fd, rtol=1e-6)


def test_float32_in_float32_out():
    x = RNG.standard_normal(77).astype(np.float32)
    g = gj.grad(poly, target="cuda")(x)
    assert g.dtype == np.float32
    np.testing.assert_allclose(g, 2 * x + 3 * x ** 2, rtol=1e-5)
    v = gj.jit(lambda x: np.sum(x), target="cuda")(x)
    assert v.dtype == np.float32
    np.testing.assert_allclose(v, np.sum(x.astype(np.float64)), rtol=1e-6)


def gathered(w, idx):
    return np.sum(np.sin(w[idx]) * 1.5)


def test_scatter_add_gradient(monkeypatch):
    """The gradient of a gather with repeated indices adds into the same element from many
    threads: atomic adds; in deterministic mode one thread in order, the same bits each run."""
    w, idx = RNG.standard_normal(9), RNG.integers(0, 9, 300)
    want = np.zeros(9)
    np.add.at(want, idx, 1.5 * np.cos(w[idx]))
    np.testing.assert_allclose(gj.grad(gathered, target="cuda")(w, idx), want, rtol=1e-12)
    monkeypatch.setenv("GRADJIT_CUDA_DETERMINISTIC", "1")
    det = gj.grad(gathered, target="cuda")
    src = det.lower(w, idx).source
    assert not [ln for ln in src.splitlines() if "cuda.atomic.add(" in ln and "gj_cnt" not in ln]
    first, second = det(w, idx), det(w, idx)
    assert first.tobytes() == second.tobytes()
    np.testing.assert_allclose(first, want, rtol=1e-12)


def grow_until(b):
    while np.linalg.norm(b) < 1000:  # a loop of the host function: one launch per trip
        b = b * 2
    return b


def element_loop(x):
    s = 0.0
    for i in range(x.shape[0]):
        s += x[i] ** 2
    return s


X7, V20 = RNG.standard_normal((20, 7)), RNG.standard_normal(20)
AGAINST_CPU = {
    "column sums": (gj.jit, lambda X: X.sum(axis=0), (X7,)),
    "row max": (gj.jit, lambda X: np.max(X, axis=1), (X7,)),
    "where": (gj.grad, lambda x: np.sum(np.where(x > 0, x ** 2, -x)), (V20,)),
    "hessian": (gj.hessian, lambda x: np.sum(x ** 3) * np.sum(x), (X7[0],)),
    "tuple result": (gj.jit, lambda x: (x * 2, np.sum(x)), (V20,)),
    "norm": (gj.grad, lambda x: np.linalg.norm(x), (V20,)),
    "tanh(X @ w)": (gj.grad, lambda w: np.sum(np.tanh(X7 @ w)), (X7[1],)),
    "slices": (gj.grad, lambda x: np.sum(x[1:5] ** 2) + x[0], (V20,)),
    "while over norm": (gj.jit, grow_until, (X7[2],)),
    "loop over elements": (gj.grad, element_loop, (X7[3],)),
}


@pytest.mark.parametrize("name", list(AGAINST_CPU))
def test_against_the_cpu_target(name):
    transform, fn, args = AGAINST_CPU[name]
    got, want = transform(fn, target="cuda")(*args), transform(fn, target="cpu")(*args)
    got, want = (got, want) if isinstance(want, tuple) else ((got,), (want,))
    for g, w in zip(got, want):
        assert np.shape(g) == np.shape(w) and np.asarray(g).dtype == np.asarray(w).dtype
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-14)
