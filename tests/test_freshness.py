"""Never a silently wrong number: a kernel belongs to the function it was traced from, and
everything a trace reads from outside its arguments is either re-read at every call (arrays)
or guarded (everything else: a change retraces). The caller's objects are never changed."""

import os
import subprocess
import sys
import textwrap
import types

import numpy as np
import pytest

import gradjit as gj

X = np.array([1.0, 2.0, 3.0])


# -- kernel identity: many functions on one line ------------------------------------------------


def test_two_lambdas_on_one_line_are_two_functions():
    g2, g3 = gj.grad(lambda x: np.sum(x ** 2)), gj.grad(lambda x: np.sum(x ** 3))
    np.testing.assert_allclose(g2(X), 2 * X)
    np.testing.assert_allclose(g3(X), 3 * X ** 2)
    j2, j3 = gj.jit(lambda x: x * 2.0), gj.jit(lambda x: x * 3.0)
    np.testing.assert_allclose(j2(X), 2 * X)
    np.testing.assert_allclose(j3(X), 3 * X)


def test_lambdas_in_dicts_comprehensions_and_conditionals():
    losses = {"sq": gj.grad(lambda w: np.sum(w ** 2)), "sin": gj.grad(lambda w: np.sum(np.sin(w)))}
    np.testing.assert_allclose(losses["sq"](X), 2 * X)
    np.testing.assert_allclose(losses["sin"](X), np.cos(X))
    for c in (True, False):
        g = gj.grad(lambda x: np.sum(np.exp(x))) if c else gj.grad(lambda x: np.sum(np.cos(x)))
        np.testing.assert_allclose(g(X), np.exp(X) if c else -np.sin(X))
    # one code object, several closures: each kernel sees its own k
    gs = [gj.grad(lambda x, k=k: k * np.sum(x ** 2)) for k in (1.0, 2.0, 3.0)]
    hs = [gj.grad(lambda x: np.sum(x ** p)) for p in (2.0, 3.0)]
    for k, g in zip((1.0, 2.0, 3.0), gs):
        np.testing.assert_allclose(g(X), 2 * k * X)
    # Python's late binding: both lambdas see the comprehension's last p, as Python does
    np.testing.assert_allclose(hs[0](X), 3 * X ** 2)
    np.testing.assert_allclose(hs[1](X), 3 * X ** 2)
    # nested lambdas on one line: the inner one is its own function
    outer = gj.grad(lambda x: (lambda y: np.sum(y ** 3))(x) + np.sum(x))
    np.testing.assert_allclose(outer(X), 3 * X ** 2 + 1)


def test_same_line_lambdas_in_a_new_process_with_the_disk_cache(tmp_path):
    script = tmp_path / "lams.py"
    script.write_text(textwrap.dedent("""
        import sys, json
        sys.path.insert(0, sys.argv[1])
        import numpy as np, gradjit as gj
        x = np.array([1.0, 2.0])
        fs = [gj.grad(lambda x: np.sum(x ** 2)), gj.grad(lambda x: np.sum(x ** 3)), gj.grad(lambda x: np.sum(x ** 4))]
        print(json.dumps([f(x).tolist() for f in fs]))
    """))
    env = dict(os.environ, GRADJIT_CACHE_DIR=str(tmp_path / "cache"))
    env.pop("GRADJIT_DISABLE_CACHE", None)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    want = [[2.0, 4.0], [3.0, 12.0], [4.0, 32.0]]
    for _ in range(2):  # the second process reads every kernel from the disk cache
        out = subprocess.run([sys.executable, str(script), repo], env=env, capture_output=True,
                             text=True, timeout=300, check=True)
        assert eval(out.stdout.strip().splitlines()[-1]) == want


# -- freshness: attributes, items, module attributes --------------------------------------------


class Model:
    def __init__(self, n=3):
        self.b = 1.0
        self.W = np.eye(n)
        self.layers = [np.ones(n), 2.0 * np.ones(n)]
        self.cfg = types.SimpleNamespace(scale=1.0, inner=types.SimpleNamespace(power=2))
        self.nfev = 0

    def loss(self, x):
        return self.b * np.sum(self.W @ x)

    def deep(self, x):
        h = x
        for w in self.layers:
            h = h * w
        return self.cfg.scale * np.sum(h ** self.cfg.inner.power)

    def via_method(self, x):
        return self.loss(x) * 2.0


def test_attributes_read_through_self_are_fresh():
    m = Model()
    g = gj.grad(m.loss)
    np.testing.assert_allclose(g(X), np.ones(3))
    m.b = 5.0
    np.testing.assert_allclose(g(X), 5 * np.ones(3))
    m.W = 2.0 * np.eye(3)  # a new array: passed at every call, never baked in
    np.testing.assert_allclose(g(X), 10 * np.ones(3))
    m.W[0, 0] = 7.0  # written in place
    np.testing.assert_allclose(g(X), [35.0, 10.0, 10.0])
    m.W = np.eye(3, dtype=np.float32)  # a new dtype: retraced
    np.testing.assert_allclose(g(X), 5 * np.ones(3), rtol=1e-6)


def test_nested_attributes_lists_of_arrays_and_methods_are_fresh():
    m = Model()
    g = gj.grad(m.deep)

    def want():
        s = np.prod(m.layers, axis=0)
        p = m.cfg.inner.power
        return m.cfg.scale * p * s ** p * X ** (p - 1)

    np.testing.assert_allclose(g(X), want())
    m.layers[1] = 3.0 * np.ones(3)
    np.testing.assert_allclose(g(X), want())
    m.cfg.scale = 0.5
    np.testing.assert_allclose(g(X), want())
    m.cfg.inner.power = 3
    np.testing.assert_allclose(g(X), want())
    m.layers.append(np.full(3, 0.5))  # a longer list: retraced
    np.testing.assert_allclose(g(X), want())
    h = gj.grad(m.via_method)
    np.testing.assert_allclose(h(X), 2 * m.b * np.ones(3))
    m.b = -1.0
    np.testing.assert_allclose(h(X), -2 * np.ones(3))


class Cfg:
    alpha = 1.0


cfg = Cfg()
COEF = [1.0, 2.0]
TABLE = {"w": np.array([1.0, 1.0, 1.0]), "k": 2.0}
helpers = types.ModuleType("freshness_helpers")
helpers.K = 1.5


def uses_globals(x):
    return np.sum(x) * cfg.alpha + COEF[1] * np.sum(x) + TABLE["k"] * np.sum(TABLE["w"] * x) \
        + helpers.K * np.sum(x)


def test_global_objects_lists_dicts_and_module_attributes_are_fresh():
    g = gj.grad(uses_globals)
    j = gj.jit(uses_globals)

    def want():
        return np.full(3, cfg.alpha + COEF[1] + helpers.K) + TABLE["k"] * TABLE["w"]

    np.testing.assert_allclose(g(X), want())
    for change in (lambda: setattr(cfg, "alpha", 7.0), lambda: COEF.__setitem__(1, 20.0),
                   lambda: TABLE.__setitem__("k", -1.0), lambda: TABLE["w"].__setitem__(0, 9.0),
                   lambda: setattr(helpers, "K", 0.25), lambda: setattr(Cfg, "alpha", 3.0)):
        change()
        np.testing.assert_allclose(g(X), want())
        assert j(X) == pytest.approx(uses_globals(X))


def test_a_large_array_attribute_is_an_input_not_a_constant():
    rng = np.random.default_rng(0)

    class Big:
        W = None

        def loss(self, x):
            return np.sum(np.tanh(self.W @ x))

    b = Big()
    b.W = rng.standard_normal((300, 300)) / 30
    x = rng.standard_normal(300)
    g = gj.grad(b.loss)
    np.testing.assert_allclose(g(x), b.W.T @ (1 - np.tanh(b.W @ x) ** 2), rtol=1e-10)
    b.W = rng.standard_normal((300, 300)) / 30
    np.testing.assert_allclose(g(x), b.W.T @ (1 - np.tanh(b.W @ x) ** 2), rtol=1e-10)


def test_hot_path_stays_on_with_guards_and_falls_off_on_a_change():
    m = Model()
    g = gj.grad(m.loss)
    g(X)
    g(X)
    assert g.fast, "an entry with guards is on the hot path"
    before = gj.cache_info().compiles
    m.b = 2.0
    np.testing.assert_allclose(g(X), 2 * np.ones(3))
    np.testing.assert_allclose(g(X), 2 * np.ones(3))
    m.b = 1.0  # the first value again
    np.testing.assert_allclose(g(X), np.ones(3))
    assert gj.cache_info().compiles - before <= 2


def test_nan_guard_does_not_retrace_every_call():
    m = Model()
    m.b = float("nan")
    g = gj.jit(m.loss)
    assert np.isnan(g(X))
    n = gj.cache_info().misses
    for _ in range(3):
        assert np.isnan(g(X))
    assert gj.cache_info().misses == n


# -- the caller's data is left alone ------------------------------------------------------------


def test_captured_arrays_stay_writeable_and_unchanged():
    m = Model()
    m.small = np.arange(3.0)
    m.loss2 = types.MethodType(lambda self, x: np.sum(x * self.small + np.array([1.0, 2.0, 3.0])), m)
    g = gj.grad(m.loss2)
    np.testing.assert_allclose(g(X), m.small)
    m.small *= 0.5  # must not raise: gradjit never re-flags the caller's arrays
    m.W *= 0.9
    np.testing.assert_allclose(g(X), m.small)
    const = np.array([1.0, 2.0, 3.0])
    h = gj.grad(lambda x: np.sum(x * np.asarray(const)))
    h(X)
    const[0] = 5.0  # a constant the trace lifted is a private copy


# -- effects: nothing silently done once --------------------------------------------------------


@pytest.mark.parametrize("draw", [
    lambda x: np.sum(x * np.random.rand(3)),
    lambda x: np.sum(x * np.random.normal(size=3)),
    lambda x: np.sum(x * np.random.default_rng(0).normal(size=3)),
])
def test_random_draws_inside_a_traced_function_are_refused(draw):
    with pytest.raises(gj.TraceError, match="test_freshness.py.*draws random numbers"):
        gj.jit(draw)(X)


def test_random_generator_read_from_outside_is_refused():
    rng = np.random.default_rng(1)
    with pytest.raises(gj.TraceError, match="random"):
        gj.grad(lambda x: np.sum(x * rng.standard_normal(3)))(X)


def test_print_of_a_traced_value_is_refused():
    def f(x):
        print("x is", x)
        return np.sum(x)
    with pytest.raises(gj.TraceError, match=r"print\(\) of a traced value"):
        gj.jit(f)(X)
