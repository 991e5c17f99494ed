"""The CUDA target's runtime under the simulator: target selection, device arrays in and
out, cache keys, the disk cache, errors, the command line, and imports."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("numba_cuda")

import gradjit as gj  # noqa: E402
from gradjit.runtime import cli  # noqa: E402
from gradjit.runtime.diskcache import DiskCache  # noqa: E402
from numba import cuda  # noqa: E402

RNG = np.random.default_rng(3)
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def poly(x):
    return np.sum(x ** 2 + x ** 3 + 5)


def is_device(a):
    return type(a).__name__ in ("FakeCUDAArray", "DeviceNDArray") or \
        hasattr(a, "__cuda_array_interface__")


def test_device_arrays_in_device_arrays_out_and_auto_picks_cuda():
    x = RNG.standard_normal(50)
    g = gj.grad(poly)  # target="auto"
    d = g(cuda.to_device(x))
    assert is_device(d)
    np.testing.assert_allclose(d.copy_to_host(), 2 * x + 3 * x ** 2, rtol=1e-13)
    # the same transform on numpy arrays of the same dtype and rank: its own (CPU) entry
    h = g(x)
    assert type(h) is np.ndarray
    np.testing.assert_allclose(h, 2 * x + 3 * x ** 2, rtol=1e-13)
    assert len(g.cache) == 2
    d2 = g(cuda.to_device(x[:20]))  # a new length: the same entry
    assert is_device(d2) and len(g.cache) == 2
    np.testing.assert_allclose(d2.copy_to_host(), 2 * x[:20] + 3 * x[:20] ** 2, rtol=1e-13)


def test_device_float32_and_scalar_results():
    x = RNG.standard_normal(40).astype(np.float32)
    v, gr = gj.value_and_grad(poly)(cuda.to_device(x))
    assert isinstance(v, np.float32)  # rank-0 results: numpy scalars (one small copy)
    assert is_device(gr) and gr.dtype == np.float32
    np.testing.assert_allclose(gr.copy_to_host(), 2 * x + 3 * x ** 2, rtol=1e-5)


def test_gradjit_target_overrides_auto(monkeypatch):
    monkeypatch.setenv("GRADJIT_TARGET", "cuda")
    x = RNG.standard_normal(30)
    g = gj.grad(poly)
    assert "@cuda.jit" in g.lower(x).source
    np.testing.assert_allclose(g(x), 2 * x + 3 * x ** 2, rtol=1e-13)
    monkeypatch.setenv("GRADJIT_TARGET", "tpu")
    with pytest.raises(gj.GradjitError, match="GRADJIT_TARGET"):
        gj.grad(poly)(x)


def test_device_arrays_with_target_cpu_is_a_clear_error():
    with pytest.raises(gj.GradjitError, match="target='cuda'"):
        gj.grad(poly, target="cpu")(cuda.to_device(np.ones(4)))


def test_unsupported_construct_names_it_and_the_line():
    def scan(x):
        return np.sum(np.cumsum(x))
    line = scan.__code__.co_firstlineno + 1
    with pytest.raises(gj.GradjitError) as info:
        gj.grad(scan, target="cuda")(np.ones(5))
    msg = str(info.value)
    assert "cumsum" in msg and f"test_cuda_runtime.py:{line}" in msg and "target='cpu'" in msg
    assert "Traceback" not in msg


def test_disk_cache_entry_records_target_and_capability(tmp_path):
    script = textwrap.dedent(f"""
        import sys; sys.path.insert(0, {REPO!r})
        import numpy as np, gradjit as gj
        def f(x):
            return np.sum(np.sin(x) * x)
        x = np.linspace(0, 1, 40)
        g = gj.grad(f, target="cuda")(x)
        assert np.allclose(g, np.sin(x) + x * np.cos(x))
        print(gj.cache_info().compiles)
    """)
    env = dict(os.environ, GRADJIT_CACHE_DIR=str(tmp_path), NUMBA_ENABLE_CUDASIM="1")
    (tmp_path / "user_script.py").write_text(script)
    runs = [subprocess.run([sys.executable, str(tmp_path / "user_script.py")], env=env, capture_output=True,
                           text=True, timeout=120) for _ in range(2)]
    for r in runs:
        assert r.returncode == 0, r.stderr
    assert [r.stdout.split()[-1] for r in runs] == ["1", "0"]  # the second process reuses it
    entries = DiskCache(str(tmp_path)).entries()
    assert [(e["target"], e["capability"]) for e in entries] == [("cuda", "sim")]


def test_no_gpu_and_no_simulator_is_a_clear_error(tmp_path):
    script = textwrap.dedent(f"""
        import sys; sys.path.insert(0, {REPO!r})
        import numpy as np, gradjit as gj
        try:
            gj.grad(lambda x: np.sum(x * x), target="cuda")(np.ones(3))
        except gj.GradjitError as e:
            print("ERROR", e)
    """)
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="0", GRADJIT_CACHE_DIR=str(tmp_path))
    (tmp_path / "user_script.py").write_text(script)
    r = subprocess.run([sys.executable, str(tmp_path / "user_script.py")], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    if "ERROR" not in r.stdout:
        pytest.skip("this machine has a usable GPU")
    assert "no CUDA GPU" in r.stdout and "NUMBA_ENABLE_CUDASIM=1" in r.stdout


def test_import_gradjit_imports_no_numba_cuda(tmp_path):
    script = tmp_path / "plain.py"
    script.write_text(
        f"import sys\nsys.path.insert(0, {REPO!r})\nimport numpy as np\nimport gradjit as gj\n\n"
        "def f(x):\n    return np.sum(x ** 2)\n\n"
        "assert gj.grad(f)(np.ones(3))[0] == 2.0\n"
        "assert not [m for m in sys.modules if m.split('.')[0] in ('numba_cuda', 'cuda')\n"
        "            or m.startswith(('numba.cuda', 'gradjit.kernels.cuda',\n"
        "                             'gradjit.compiler.codegen.cuda'))], sorted(sys.modules)\n")
    env = dict(os.environ, GRADJIT_CACHE_DIR=str(tmp_path / "cache"))
    subprocess.run([sys.executable, str(script)], check=True, timeout=120, env=env)


USER = '''
import numpy as np

def loss(w, x):
    return np.sum((x * w - 1.0) ** 2)
'''


@pytest.fixture
def fresh_disk_cache():
    """The runtime's disk cache object opened anew (the CLI's --cache-dir reaches it)."""
    from gradjit.runtime import state
    state.reset_disk_cache()
    yield
    state.reset_disk_cache()


def test_cli_inspect_source_for_cuda_and_cache_list_target(tmp_path, capsys, monkeypatch,
                                                           fresh_disk_cache):
    (tmp_path / "cuda_user_mod.py").write_text(USER)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [str(tmp_path)] + sys.path)
    cdir = str(tmp_path / "cache")
    rc = cli.main(["--cache-dir", cdir, "inspect", "cuda_user_mod:loss", "--transform", "grad",
                   "--signature", "float64[:], float64[:]", "--target", "cuda", "--source"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "@cuda.jit" in out and "def kernel(" in out and "from numba import cuda" in out
    rc = cli.main(["--cache-dir", cdir, "warm", "cuda_user_mod:loss", "--transform", "grad",
                   "--signature", "float64[:], float64[:]", "--target", "cuda"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    rc = cli.main(["--cache-dir", cdir, "cache", "list"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    header, *rows = out.strip().splitlines()
    assert header.split()[:4] == ["FUNCTION", "FILE:LINE", "TRANSFORM", "TARGET"]
    assert len(rows) == 1 and "loss" in rows[0] and "cuda sim" in rows[0]
    rc = cli.main(["inspect", "cuda_user_mod:loss", "--signature", "float64[:], float64[:]",
                   "--target", "gpu"])
    assert rc == 2
