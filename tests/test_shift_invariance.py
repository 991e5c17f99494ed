"""A max subtracted for stability (log-softmax, softmax) gets no derivative (compiler/shift.py):
the gradients stay exact (closed forms, central differences), the kernel skips the max's
adjoint, and maxima that do matter keep theirs."""

import re

import numpy as np
import pytest

import gradjit as gj
from gradjit.compiler.shift import shift_free


def central(f, z, *rest, h=1e-6):
    g = np.zeros_like(z)
    for k in np.ndindex(z.shape):
        e = np.zeros_like(z)
        e[k] = h
        g[k] = (f(z + e, *rest) - f(z - e, *rest)) / (2 * h)
    return g


def xent(W, X, y):
    z = X @ W
    m = np.max(z, axis=1, keepdims=True)
    logp = z - m - np.log(np.sum(np.exp(z - m), axis=1, keepdims=True))
    return -np.mean(logp[np.arange(X.shape[0]), y])


def softmax_mse(z, t):
    m = np.max(z, axis=-1, keepdims=True)
    p = np.exp(z - m) / np.sum(np.exp(z - m), axis=-1, keepdims=True)
    return np.sum((p - t) ** 2)


def logsumexp_rows(z):  # m + log(sum(exp(z - m))): the shift cancels here too
    m = np.max(z, axis=1, keepdims=True)
    return np.sum(m + np.log(np.sum(np.exp(z - m), axis=1, keepdims=True)))


def unnormalised(z):  # sum(exp(z - m)) alone: depends on m
    m = np.max(z, axis=1, keepdims=True)
    return np.sum(np.exp(z - m))


def scaled_shift(z):  # 2 (z - m): depends on m
    m = np.max(z, axis=1, keepdims=True)
    return np.sum(np.exp(2.0 * (z - m)))


def max_over_other_axis(z):  # the sum runs along an axis the max does not: not a shift
    m = np.max(z, axis=0, keepdims=True)
    return np.sum(np.log(np.sum(np.exp(z - m), axis=1)))


def shifts(f, *args):
    return len(shift_free(gj.grad(f).lower(*args).traced.graph))


RNG = np.random.default_rng(5)


def test_log_softmax_cross_entropy_closed_form_without_the_max_adjoint():
    W, X = RNG.standard_normal((6, 4)), RNG.standard_normal((9, 6))
    y = RNG.integers(0, 4, 9)
    assert shifts(xent, W, X, y) == 1
    z = X @ W
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    want = X.T @ (p - np.eye(4)[y]) / 9
    np.testing.assert_allclose(gj.grad(xent)(W, X, y), want, rtol=1e-12, atol=1e-15)
    src = gj.grad(xent).lower(W, X, y).source
    # the max's adjoint masks the maxima (z == m): gone (the size-1 guard and the check that
    # the max is not over an empty axis are other tests)
    assert not [ln for ln in src.splitlines()
                if "==" in ln and not re.fullmatch(r"\s*if v\d+ == 1( or v\d+ == 1)*:", ln)
                and not re.fullmatch(r"\s*v\d+ = \(v\d+ == 0\)", ln)]


def test_softmax_gradient_matches_differences():
    z, t = RNG.standard_normal((5, 7)), RNG.random((5, 7))
    assert shifts(softmax_mse, z, t) == 1
    np.testing.assert_allclose(gj.grad(softmax_mse)(z, t), central(softmax_mse, z, t),
                               rtol=1e-6, atol=1e-9)
    zz = z * 300.0  # large logits: the shift is what keeps exp finite
    g = gj.grad(softmax_mse)(zz, t)
    assert np.all(np.isfinite(g))


def test_logsumexp_gradient_is_the_softmax():
    z = RNG.standard_normal((4, 6))
    assert shifts(logsumexp_rows, z) == 1
    p = np.exp(z - z.max(1, keepdims=True))
    np.testing.assert_allclose(gj.grad(logsumexp_rows)(z), p / p.sum(1, keepdims=True),
                               rtol=1e-12)


@pytest.mark.parametrize("f", [unnormalised, scaled_shift, max_over_other_axis])
def test_maxima_that_matter_keep_their_derivative(f):
    z = RNG.standard_normal((4, 6))
    assert shifts(f, z) == 0
    np.testing.assert_allclose(gj.grad(f)(z), central(f, z), rtol=1e-6, atol=1e-8)


def test_hessian_of_log_softmax_loss():
    z, y = RNG.standard_normal(5), 2

    def nll(z):
        m = np.max(z, keepdims=True)
        return -(z - m - np.log(np.sum(np.exp(z - m), keepdims=True)))[y]
    p = np.exp(z - z.max())
    p /= p.sum()
    np.testing.assert_allclose(gj.hessian(nll)(z), np.diag(p) - np.outer(p, p), rtol=1e-10,
                               atol=1e-14)
