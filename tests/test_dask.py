"""Dask arrays as arguments: the map/reduce split of a graph (compiler/distribute.py) checked
stage by stage with the reference evaluator, then grad/value_and_grad/jit/vjp/vmap over Dask
arrays on the threaded and process schedulers and a LocalCluster of two worker processes,
against in-memory gradjit and independent references (closed forms, central differences)."""

import os
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest

import gradjit as gj
from gradjit.compiler import distribute as D
from gradjit.compiler import passes
from gradjit.compiler.ir import verify
from gradjit.compiler.reference import evaluate
from gradjit.compiler.transforms import trace, transform_spec

da = pytest.importorskip("dask.array")
dask = pytest.importorskip("dask")
distributed = pytest.importorskip("distributed")

N, D_IN, K = 2000, 5, 4
RNG = np.random.default_rng(16)
X = RNG.normal(size=(N, D_IN))
W = RNG.normal(size=D_IN) * 0.3
Y_REG = X @ W + 0.1 * RNG.normal(size=N)
Y_BIN = (RNG.random(N) < 1 / (1 + np.exp(-X @ W))).astype(np.float64)
Y_CLS = RNG.integers(0, K, N)
WK = RNG.normal(size=(D_IN, K)) * 0.3
CHUNK = 500


def dX():
    return da.from_array(X, chunks=(CHUNK, D_IN))


def dy(y):
    return da.from_array(y, chunks=CHUNK)


# ---- the functions ---------------------------------------------------------------------------


def mse(w, X, y):
    r = X @ w - y
    return np.mean(r ** 2)


def logistic(w, X, y):
    z = X @ w
    return np.mean(np.logaddexp(0.0, z) - y * z) + 0.01 * np.sum(w ** 2)


def softmax_ce(Wk, X, y):
    z = X @ Wk
    m = np.max(z, axis=1, keepdims=True)
    lse = np.log(np.sum(np.exp(z - m), axis=1)) + m[:, 0]
    return np.mean(lse - z[np.arange(X.shape[0]), y])


def gauss_loglik(mu, X):
    """A Gaussian log-likelihood whose covariance is estimated from row sums around ``mu``."""
    n, d = X.shape
    r = X - mu
    S = r.T @ r / n
    sign, logdet = np.linalg.slogdet(S)
    return -0.5 * n * (logdet + d * np.log(2 * np.pi)) - 0.5 * np.sum(mu ** 2)


def logsumexp_rows(w, X):
    z = X @ w
    m = np.max(z)
    return np.log(np.sum(np.exp(z - m))) + m


# independent references --------------------------------------------------------------------


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


def grad_mse(w, X, y):
    return 2 * X.T @ (X @ w - y) / len(y)


def grad_logistic(w, X, y):
    return X.T @ (sigmoid(X @ w) - y) / len(y) + 0.02 * w


def grad_softmax(Wk, X, y):
    z = X @ Wk
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(y)), y] -= 1
    return X.T @ p / len(y)


def central(f, x, h=1e-6):
    g = np.zeros_like(x)
    for i in range(x.size):
        e = np.zeros_like(x)
        e.flat[i] = h
        g.flat[i] = (f(x + e) - f(x - e)) / (2 * h)
    return g


def numpy_gauss(mu, X):
    n, d = X.shape
    r = X - mu
    return -0.5 * n * (np.linalg.slogdet(r.T @ r / n)[1] + d * np.log(2 * np.pi)) \
        - 0.5 * np.sum(mu ** 2)


CASES = {  # name: (function, parameters, data, closed-form gradient or None)
    "mse": (mse, W, (Y_REG,), grad_mse),
    "logistic": (logistic, W, (Y_BIN,), grad_logistic),
    "softmax_ce": (softmax_ce, WK, (Y_CLS,), grad_softmax),
    "gauss_loglik": (gauss_loglik, X.mean(axis=0) + 0.1, (), None),
}


def reference_grad(name):
    f, p, data, closed = CASES[name]
    if closed is not None:
        return closed(p, X, *data)
    return central(lambda q: numpy_gauss(q, X), p)


def check_case(name, tol=1e-8):
    f, p, data, _ = CASES[name]
    value, grad = gj.value_and_grad(f)(p, dX(), *[dy(y) for y in data])
    v_mem, g_mem = gj.value_and_grad(f)(p, X, *data)
    assert type(value) is type(v_mem) and np.shape(grad) == np.shape(p)
    assert isinstance(grad, np.ndarray)
    np.testing.assert_allclose(value, v_mem, rtol=1e-10)
    np.testing.assert_allclose(grad, g_mem, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(grad, reference_grad(name), rtol=tol, atol=tol)


# ---- the split, on the reference evaluator -------------------------------------------------


def plan_of(f, args, chunked, kind="value_and_grad"):
    tf = getattr(gj, kind)(f)
    traced = trace(f, args)
    graph, _ = transform_spec(tf, traced, args, {})
    graph = passes.optimize(graph)
    plan = D.split(graph, chunked, traced.loc)
    for stage in plan.chunks:
        verify(stage.graph)
    for stage in plan.drivers:
        verify(stage)
    return graph, plan


@pytest.mark.parametrize("name, passes_", [("mse", 1), ("logistic", 1), ("softmax_ce", 1),
                                           ("gauss_loglik", 2)])
def test_split_matches_the_whole_graph(name, passes_):
    f, p, data, _ = CASES[name]
    args = (p, X, *data)
    graph, plan = plan_of(f, args, {k: 0 for k in range(1, len(args))})
    assert plan.passes == passes_
    want = evaluate(graph, *args)
    for bounds in ([0, N], [0, 500, 1000, 1500, N], [0, 3, 700, 1999, N]):
        got = D.evaluate(plan, list(args), bounds)
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_split_stages():
    """A sum over rows fuses forward and backward in one pass whose partials are X.T @ r and
    the loss's row sum; the count of mean is the total, a value of driver stage 0."""
    _, plan = plan_of(mse, (W, X, Y_REG), {1: 0, 2: 0})
    (stage,) = plan.chunks
    assert [n for _, n in stage.partials] == ["add", "add"]
    assert plan.total in stage.globals or plan.total not in stage.graph.inputs
    # a max over rows combines by maximum, then a second pass sums exp(z - max), and the
    # backward pass needs a third (exp(z - max) / sum, a function of both, back in the rows)
    _, plan = plan_of(logsumexp_rows, (W, X), {1: 0})
    assert [[n for _, n in c.partials] for c in plan.chunks] == [["maximum"], ["add"], ["add"]]
    want = evaluate(plan.graph, W, X)
    got = D.evaluate(plan, [W, X], [0, 333, 1200, N])
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-10)


def cumsum_rows(w, X):
    return np.sum(np.cumsum(X @ w, axis=0) ** 2)


def reversed_rows(w, X):
    z = X @ w
    return np.sum(z[::-1] * z)


def loop_over_rows(w, X):
    s = 0.0
    for i in range(X.shape[0]):
        s = 0.5 * s + X[i] @ w
    return s


def pairs_rows(w, X):
    return np.sum(X @ X.T @ (X @ w))


@pytest.mark.parametrize("f, op", [(cumsum_rows, "np.cumsum"), (reversed_rows, "indexing"),
                                   (loop_over_rows, "a for loop"),
                                   (pairs_rows, "a matrix product")])
def test_not_splittable_names_the_operation_and_line(f, op):
    with pytest.raises(D.NotSplittable) as err:
        plan_of(f, (W, X), {1: 0})
    msg = str(err.value)
    assert op in msg and "test_dask.py:" in msg, msg
    assert isinstance(err.value, gj.GradjitError)


# ---- the threaded scheduler ------------------------------------------------------------------


@pytest.fixture
def threads():
    with dask.config.set(scheduler="threads"):
        yield


@pytest.mark.parametrize("name", ["mse", "logistic"])
def test_grad_threaded(name, threads):
    check_case(name)
    f, p, data, _ = CASES[name]
    g = gj.grad(f)(p, dX(), *[dy(y) for y in data])
    np.testing.assert_allclose(g, reference_grad(name), rtol=1e-8, atol=1e-10)
    assert np.isclose(gj.jit(f)(p, dX(), *[dy(y) for y in data]), f(p, X, *data))


def test_uneven_chunks_and_chunked_columns(threads):
    Xd = da.from_array(X, chunks=((700, 1, 298, 1000, 1), (3, 2)))  # rows of 1 get merged
    yd = da.from_array(Y_REG, chunks=999)  # rechunked like X
    np.testing.assert_allclose(gj.grad(mse)(W, Xd, yd), grad_mse(W, X, Y_REG), rtol=1e-9)


def test_vjp_and_row_outputs(threads):
    def f(w, X):
        return np.tanh(X @ w)
    out, back = gj.vjp(f, W, dX())
    assert isinstance(out, np.ndarray) and out.shape == (N,)
    np.testing.assert_allclose(out, np.tanh(X @ W), rtol=1e-12)
    ct = RNG.normal(size=N)
    gw, gX = back(ct)
    want_w, want_X = gj.vjp(f, W, X)[1](ct)
    np.testing.assert_allclose(gw, want_w, rtol=1e-10)
    np.testing.assert_allclose(gX, want_X, rtol=1e-10)


def test_mismatched_rows_and_numpy_rows(threads):
    with pytest.raises(gj.GradjitError, match="numbers of rows"):
        gj.grad(mse)(W, dX(), dy(Y_REG[:-10]))
    with pytest.raises(gj.GradjitError, match="pass it as a Dask array"):
        gj.grad(mse)(W, dX(), Y_REG)


def test_import_gradjit_imports_no_dask(tmp_path):
    script = tmp_path / "plain.py"
    script.write_text(
        "import sys\nimport numpy as np\nimport gradjit as gj\n\n"
        "def f(x):\n    return np.sum(x ** 2)\n\n"
        "assert gj.grad(f)(np.ones(3))[0] == 2.0\n"
        "assert not [m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')]\n")
    subprocess.run([sys.executable, str(script)], check=True, timeout=120)


def test_processes_scheduler():
    with dask.config.set(scheduler="processes", num_workers=2):
        value, grad = gj.value_and_grad(mse)(W, dX(), dy(Y_REG))
    np.testing.assert_allclose(grad, grad_mse(W, X, Y_REG), rtol=1e-9)
    np.testing.assert_allclose(value, mse(W, X, Y_REG), rtol=1e-12)


def test_parameters_once_per_pass(threads):
    """The parameters and the kernel's description are one key each in a pass's graph, read
    by every chunk's task."""
    seen = []

    def get(dsk, keys, **kw):
        # (a graph, or an expression of one in newer dask)
        seen.append(dict(dsk.__dask_graph__() if hasattr(dsk, "__dask_graph__") else dsk))
        return dask.threaded.get(dsk, keys, **kw)

    with dask.config.set(scheduler=get):
        gj.grad(logistic)(W, dX(), dy(Y_BIN))
    (dsk,) = seen
    names = [k[0] if isinstance(k, tuple) else k for k in dsk]
    assert sum(str(n).startswith("tuple-") for n in names) == 1
    assert sum(str(n).startswith("StageKernel-") for n in names) == 1
    assert sum(str(n).startswith("run_chunk-") for n in names) == N // CHUNK


class CountedLoss:
    """A model object as users write them: a loss method with an evaluation counter."""

    def __init__(self):
        self.nfev = 0

    def loss(self, w, X, y):
        self.nfev += 1
        return mse(w, X, y)


def test_side_effects_are_replayed_per_call_over_dask_arrays(threads):
    model = CountedLoss()
    g = gj.grad(model.loss)
    for k in range(3):
        np.testing.assert_allclose(g(W, dX(), dy(Y_REG)), grad_mse(W, X, Y_REG), rtol=1e-9)
        assert model.nfev == k + 1


# ---- a LocalCluster of two worker processes ----------------------------------------------------


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                           dashboard_address=None, silence_logs=40)
    c = Client(cluster)
    yield c
    c.close()
    cluster.close()


@pytest.mark.parametrize("name", ["mse", "logistic", "softmax_ce", "gauss_loglik"])
def test_cluster_gradients(client, name):
    check_case(name, tol=1e-5 if name == "gauss_loglik" else 1e-8)


def test_cluster_vmap_jacobian(client):
    def f(x):
        return np.tanh(x[:3] * x[1:4]) * np.sum(x ** 2)
    jac = gj.vmap(gj.jacobian(f))
    lazy = jac(dX())
    assert type(lazy).__module__.startswith("dask.")
    assert lazy.shape == (N, 3, D_IN) and lazy.chunks[0] == (CHUNK,) * (N // CHUNK)
    np.testing.assert_allclose(lazy.compute(), jac(X), rtol=1e-12)


def test_cluster_compiles_once(client):
    from gradjit.runtime.dask_arrays import worker_stats
    gj.value_and_grad(logistic)(W, dX(), dy(Y_BIN))  # the kernels are on the workers now
    before = client.run(worker_stats)
    for _ in range(2):
        gj.value_and_grad(logistic)(W * 1.5, dX(), dy(Y_BIN))
    after = client.run(worker_stats)
    for w in after:  # nothing new compiled or loaded on any worker
        assert after[w]["loads"] == before[w]["loads"]
        assert after[w]["compiles"] == before[w]["compiles"]
        assert after[w]["chunks"] > before[w]["chunks"]
    # across the cluster, each kernel was compiled at most once (the other worker loaded it
    # from the shared disk cache)
    assert sum(s["compiles"] for s in after.values()) <= max(s["loads"] for s in after.values())


def _die_once(block, marker):
    """A chunk that kills its worker process the first time any worker computes it (only
    ever a Dask worker: run anywhere else, the block is passed through)."""
    from distributed import get_worker
    try:
        get_worker()
    except ValueError:
        return block
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL)
    except FileExistsError:
        return block
    os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)


def _with_timeout(fn, seconds):
    box = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            box["error"] = e
    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), "the computation hung after a worker was killed"
    return box


def test_cluster_worker_killed_mid_gradient(client, tmp_path):
    marker = str(tmp_path / "killed")
    Xd = dX().map_blocks(_die_once, marker, dtype=X.dtype)
    box = _with_timeout(lambda: gj.value_and_grad(logistic)(W, Xd, dy(Y_BIN)), 120)
    assert os.path.exists(marker)  # a worker did die
    if "error" in box:  # allowed: a clear error, never a wrong number
        assert isinstance(box["error"], gj.GradjitError), repr(box["error"])
    else:
        value, grad = box["value"]
        np.testing.assert_allclose(grad, grad_logistic(W, X, Y_BIN), rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(value, logistic(W, X, Y_BIN), rtol=1e-10)
    client.wait_for_workers(2, timeout=60)
