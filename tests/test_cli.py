"""Tests of the ``gradjit`` command line (gradjit.runtime.cli).

``warm`` and ``inspect`` run here against fakes of the compiler interface they use
(``gradjit.<transform>(fn).lower(*examples)`` and
``gradjit.runtime.signature.examples_from_signature``); end-to-end runs with the real
compiler live with the compiler's tests.
"""

import hashlib
import json
import os
import stat
import subprocess
import sys
import textwrap
import time
import types
import uuid

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import gradjit
from gradjit.runtime import cli, diskcache
from gradjit.runtime.diskcache import DiskCache, GradjitError


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ("GRADJIT_CACHE_DIR", "GRADJIT_DISABLE_CACHE", "GRADJIT_CACHE_MAX_SIZE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the CLI inserts the cwd
    diskcache._WARNED.clear()


@pytest.fixture
def cdir(tmp_path):
    return str(tmp_path / "cache")


def run(capsys, *argv):
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def new_key():
    return hashlib.sha256(uuid.uuid4().bytes).hexdigest()


def store(cache, qualname, pad=0, transform="grad", signature="(float64[:], float64)"):
    key = new_key()
    assert cache.load(key) is None  # a miss, as in the runtime, then the store
    src = f"def kernel(x):\n    return x * 2.0\n# {qualname}\n" + "#" * pad + "\n"
    cache.store(key, src, {"qualname": qualname, "file": "/src/model.py", "line": 12,
                           "transform": transform, "signature": signature, "target": "cpu",
                           "created": time.time()})
    return key


@pytest.fixture
def populated(cdir):
    """Three entries; 'Model.loss' is the least recently used, 'predict' the most."""
    cache = DiskCache(cdir)
    keys = {
        "Model.loss": store(cache, "Model.loss", pad=20_000),
        "step": store(cache, "step", pad=20_000, transform="value_and_grad"),
        "predict": store(cache, "predict", pad=20_000, transform="jit",
                         signature="(float32[:, :],)"),
    }
    for name in ("Model.loss", "step", "predict"):
        assert cache.load(keys[name]) is not None
    return keys


def assert_one_line_error(rc, out, err):
    assert rc == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "error" in lines[0] and "Traceback" not in err


# ----------------------------------------------------------------------------------------
# Help and bad arguments
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [[], ["cache"], ["cache", "list"], ["cache", "info"], ["cache", "clear"],
     ["cache", "prune"], ["cache", "verify"], ["warm"], ["inspect"]],
)
def test_help_everywhere(capsys, argv):
    rc, out, err = run(capsys, *argv, "--help")
    assert rc == 0 and out.startswith("usage: gradjit") and err == ""


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["bogus"],
        ["cache"],
        ["cache", "bogus"],
        ["cache", "list", "--bogus"],
        ["cache", "prune"],
        ["cache", "prune", "--max-size", "10Q"],
        ["cache", "clear", "--older-than", "soon"],
        ["cache", "clear", "--older-than", "-1"],
        ["warm", "mod:f"],
        ["warm", "no_colon", "--signature", "float64"],
        ["warm", "mod:f", "--signature", "float64", "--transform", "nope"],
        ["inspect", "mod:f", "--signature", "float64", "--argnums", "x"],
    ],
)
def test_bad_arguments_one_line_exit_2(capsys, cdir, argv):
    rc, out, err = run(capsys, "--cache-dir", cdir, *argv)
    assert_one_line_error(rc, out, err)


def test_python_dash_m(cdir, tmp_path):
    cache = DiskCache(cdir)
    store(cache, "f")
    env = dict(os.environ, PYTHONPATH=REPO)
    ok = subprocess.run([sys.executable, "-m", "gradjit", "--cache-dir", cdir, "cache", "info",
                         "--json"], capture_output=True, text=True, env=env, cwd=tmp_path,
                        timeout=60, check=False)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["entries"] == 1
    bad = subprocess.run([sys.executable, "-m", "gradjit", "cache", "prune"],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60,
                         check=False)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert "--max-size" in bad.stderr and "Traceback" not in bad.stderr


# ----------------------------------------------------------------------------------------
# cache list / info / clear / prune / verify
# ----------------------------------------------------------------------------------------


def test_cache_list_table(capsys, cdir, populated):
    rc, out, err = run(capsys, "--cache-dir", cdir, "cache", "list")
    assert rc == 0 and err == ""
    header, *rows = out.strip().splitlines()
    assert header.split() == ["FUNCTION", "FILE:LINE", "TRANSFORM", "SIGNATURE", "SIZE",
                              "LAST", "USED"]
    assert [r.split()[0] for r in rows] == ["predict", "step", "Model.loss"]  # recent first
    assert "/src/model.py:12" in rows[0] and "jit" in rows[0] and "(float32[:, :],)" in rows[0]
    assert "KiB" in rows[0] and time.strftime("%Y-") in rows[0]


def test_cache_list_json(capsys, cdir, populated):
    rc, out, _ = run(capsys, "cache", "list", "--json", "--cache-dir", cdir)
    assert rc == 0
    entries = json.loads(out)
    assert {e["qualname"]: e["key"] for e in entries} == populated
    for e in entries:
        assert e["size"] > 20_000 and e["last_used"] > 0 and e["file"] == "/src/model.py"
        assert {"transform", "signature", "created", "versions", "line"} <= set(e)


def test_cache_list_empty(capsys, cdir):
    rc, out, _ = run(capsys, "--cache-dir", cdir, "cache", "list")
    assert rc == 0 and "no entries" in out
    rc, out, _ = run(capsys, "--cache-dir", cdir, "cache", "list", "--json")
    assert rc == 0 and json.loads(out) == []


def test_cache_info(capsys, cdir, populated):
    rc, out, _ = run(capsys, "--cache-dir", cdir, "cache", "info", "--json")
    assert rc == 0
    info = json.loads(out)
    assert info["directory"] == cdir and info["enabled"] is True
    assert info["entries"] == 3 and info["total_size"] == DiskCache(cdir).total_size()
    assert info["hits"] == 3 and info["misses"] == 3  # each store was preceded by a miss
    rc, out, _ = run(capsys, "--cache-dir", cdir, "cache", "info")
    assert rc == 0
    assert f"directory:   {cdir}" in out and "entries:     3" in out
    assert "hits:        3" in out and "enabled:     yes" in out and "KiB" in out


def test_cache_dir_from_environment(capsys, cdir, populated, monkeypatch):
    monkeypatch.setenv("GRADJIT_CACHE_DIR", cdir)
    rc, out, _ = run(capsys, "cache", "info", "--json")
    assert rc == 0 and json.loads(out)["entries"] == 3
    # --cache-dir wins over the environment, and main() restores the environment.
    rc, out, _ = run(capsys, "--cache-dir", cdir + "-other", "cache", "info", "--json")
    assert json.loads(out)["entries"] == 0 and os.environ["GRADJIT_CACHE_DIR"] == cdir


def test_cache_info_disabled_and_insecure(capsys, cdir, populated, monkeypatch):
    monkeypatch.setenv("GRADJIT_DISABLE_CACHE", "1")
    rc, out, err = run(capsys, "--cache-dir", cdir, "cache", "info")
    assert rc == 0 and "no (disabled by GRADJIT_DISABLE_CACHE)" in out and err == ""
    monkeypatch.delenv("GRADJIT_DISABLE_CACHE")
    os.chmod(cdir, 0o777)
    rc, out, err = run(capsys, "--cache-dir", cdir, "cache", "info")
    assert rc == 0 and "entries:     0" in out
    assert err.startswith("gradjit: warning:") and "writable by group or others" in err
    assert len(err.strip().splitlines()) == 1


def test_cache_clear(capsys, cdir, populated):
    old = time.time() - 30 * 86400
    os.utime(os.path.join(cdir, "entries", populated["step"], "used"), (old, old))
    rc, out, _ = run(capsys, "--cache-dir", cdir, "cache", "clear", "--older-than", "7")
    assert rc == 0 and "removed 1 entry" in out
    rc, out, _ = run(capsys, "--cache-dir", cdir, "cache", "clear", "--function", "loss")
    assert rc == 0 and "removed 1 entry" in out
    assert [e["qualname"] for e in DiskCache(cdir).entries()] == ["predict"]
    rc, out, _ = run(capsys, "--cache-dir", cdir, "cache", "clear")
    assert rc == 0 and "removed 1 entry" in out and DiskCache(cdir).entries() == []


def test_cache_prune_reaches_size(capsys, cdir, populated):
    total = DiskCache(cdir).total_size()
    limit = total // 2
    rc, out, _ = run(capsys, "--cache-dir", cdir, "cache", "prune", "--max-size", str(limit))
    assert rc == 0 and "removed 2 entries" in out
    assert DiskCache(cdir).total_size() <= limit
    assert [e["qualname"] for e in DiskCache(cdir).entries()] == ["predict"]  # the newest
    rc, out, _ = run(capsys, "--cache-dir", cdir, "cache", "prune", "--max-size", "1K")
    assert rc == 0 and "removed 1 entry" in out and DiskCache(cdir).total_size() == 0


def test_cache_verify_finds_planted_corruption(capsys, cdir, populated):
    rc, out, _ = run(capsys, "--cache-dir", cdir, "cache", "verify")
    assert rc == 0 and "3 good entries, 0 damaged" in out
    bad = populated["step"]
    with open(os.path.join(cdir, "entries", bad, "kernel.py"), "r+b") as f:
        f.write(b"import os; os.system('x')  #")
    rc, out, _ = run(capsys, "--cache-dir", cdir, "cache", "verify")
    assert rc == 0
    assert f"{bad}: kernel.py checksum mismatch" in out and "2 good entries, 1 damaged" in out
    assert not os.path.exists(os.path.join(cdir, "entries", bad))


def test_manifests_counted_not_listed_and_kept_consistent(capsys, cdir, populated):
    cache = DiskCache(cdir)
    fkeys = {name: new_key() for name in populated}
    for name, key in populated.items():  # what a runtime trace of each function would write
        cache.store_manifest(fkeys[name], {"entry": key, "qualname": name})
    rc, out, _ = run(capsys, "--cache-dir", cdir, "cache", "info", "--json")
    assert rc == 0 and json.loads(out)["manifests"] == 3 and json.loads(out)["entries"] == 3
    rc, out, _ = run(capsys, "--cache-dir", cdir, "cache", "info")
    assert "manifests:   3" in out
    rc, out, _ = run(capsys, "--cache-dir", cdir, "cache", "list", "--json")
    assert sorted(e["key"] for e in json.loads(out)) == sorted(populated.values())
    # prune removes entries; their manifests are dead and go with them
    rc, out, _ = run(capsys, "--cache-dir", cdir, "cache", "prune", "--max-size",
                     str(DiskCache(cdir).total_size() // 2))
    assert rc == 0 and "removed 2 entries" in out
    assert [len(cache.manifests(f)) for f in fkeys.values()] == [0, 0, 1]  # predict is left
    # verify reports a damaged manifest (and removes it)
    mdir = os.path.join(cdir, "manifests", fkeys["predict"])
    [name] = os.listdir(mdir)
    with open(os.path.join(mdir, name), "r+b") as f:
        f.seek(-4, os.SEEK_END)
        f.write(b"XXXX")
    rc, out, _ = run(capsys, "--cache-dir", cdir, "cache", "verify")
    assert rc == 0 and f"manifest {fkeys['predict']}/{name}: manifest checksum mismatch" in out
    assert "1 good entry, 1 damaged" in out and DiskCache(cdir).manifest_count() == 0


# ----------------------------------------------------------------------------------------
# warm and inspect, against fakes of the compiler interface
# ----------------------------------------------------------------------------------------


class FakeLowered:
    def __init__(self, log, transform, fn, options, examples):
        self.log, self.transform, self.fn = log, transform, fn
        self.options, self.examples = options, examples
        self.traced_ir = f"TRACED {fn.__name__} {examples}"
        self.optimized_ir = f"OPTIMIZED {transform} {fn.__name__}"
        self.source = f"import numba\n# SOURCE {transform} {fn.__name__}\n"

    def dot(self):
        return "digraph G {\n  x -> sin -> out;\n}\n"

    def compile(self):
        # The real one compiles and stores into the runtime's disk cache.
        key = hashlib.sha256(repr((self.transform, self.examples)).encode()).hexdigest()
        DiskCache().store(key, "def kernel(x):\n    return x\n",
                          {"qualname": self.fn.__qualname__, "file": "f.py", "line": 1,
                           "transform": self.transform, "signature": repr(self.examples),
                           "target": "cpu", "created": time.time()})
        self.log.append(("compile", self.transform, self.fn.__name__, self.options,
                         self.examples))
        return lambda *a: None


class FakeTransformed:
    def __init__(self, log, transform, fn, options):
        self.log, self.transform, self.fn, self.options = log, transform, fn, options

    def lower(self, *examples):
        if self.fn.__name__ == "untraceable":
            raise GradjitError("model.py:3: unsupported operation 'open'\nmore detail")
        if self.fn.__name__ == "int_arg":
            raise TypeError("cannot differentiate with respect to an integer argument")
        return FakeLowered(self.log, self.transform, self.fn, self.options, examples)


def fake_examples(text):
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts or any(p not in ("float64", "float64[:]", "int64") for p in parts):
        raise ValueError(f"unknown type in {text!r}")
    return tuple(("array" if p.endswith("[:]") else p) for p in parts)


USER_MODULE = """
def loss(x, y):
    return x

def untraceable(x):
    return x

def int_arg(n):
    return n

class Model:
    @staticmethod
    def loss(x):
        return x

NOT_CALLABLE = 3
"""


@pytest.fixture
def fake_compiler(monkeypatch, tmp_path):
    log = []
    for name in cli.TRANSFORMS:
        def transform(fn, _name=name, **options):
            return FakeTransformed(log, _name, fn, options)
        monkeypatch.setattr(gradjit, name, transform, raising=False)
    sig = types.ModuleType("gradjit.runtime.signature")
    sig.examples_from_signature = fake_examples
    monkeypatch.setitem(sys.modules, "gradjit.runtime.signature", sig)
    modname = "usermod_" + uuid.uuid4().hex[:8]
    (tmp_path / f"{modname}.py").write_text(USER_MODULE)
    (tmp_path / "broken_mod.py").write_text("raise RuntimeError('boom at import')\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "broken_mod", raising=False)
    return types.SimpleNamespace(log=log, mod=modname)


def test_warm_compiles_each_signature_into_the_cache(capsys, cdir, fake_compiler):
    m = fake_compiler.mod
    rc, out, err = run(capsys, "--cache-dir", cdir, "warm", f"{m}:loss", "--transform", "grad",
                       "--signature", "float64[:], float64", "--signature", "float64, float64",
                       "--argnums", "0,1")
    assert rc == 0, err
    assert fake_compiler.log == [
        ("compile", "grad", "loss", {"argnums": (0, 1)}, ("array", "float64")),
        ("compile", "grad", "loss", {"argnums": (0, 1)}, ("float64", "float64")),
    ]
    assert "[1/2] grad" in err and "[2/2] grad" in err and "float64[:], float64" in err
    assert "warmed 2 kernels" in out and cdir in out
    assert len(DiskCache(cdir).entries()) == 2  # --cache-dir reached the runtime's cache


def test_warm_default_transform_and_dotted_function(capsys, cdir, fake_compiler):
    rc, _, err = run(capsys, "--cache-dir", cdir, "warm", f"{fake_compiler.mod}:Model.loss",
                     "--signature", "float64")
    assert rc == 0, err
    assert fake_compiler.log == [("compile", "jit", "loss", {}, ("float64",))]


def test_warm_file_path_target(capsys, cdir, fake_compiler, tmp_path):
    rc, _, err = run(capsys, "--cache-dir", cdir, "warm",
                     f"{tmp_path / fake_compiler.mod}.py:loss", "--signature", "float64")
    assert rc == 0, err
    assert len(fake_compiler.log) == 1


@pytest.mark.parametrize(
    "target, signature, message",
    [
        ("no_such_module_xyz:f", "float64", "cannot import module 'no_such_module_xyz'"),
        ("{mod}:missing", "float64", "has no attribute 'missing'"),
        ("{mod}:NOT_CALLABLE", "float64", "is not a function"),
        ("broken_mod:f", "float64", "RuntimeError: boom at import"),
        ("{mod}:loss", "complex999", "invalid signature 'complex999'"),
        ("{mod}:untraceable", "float64", "GradjitError: model.py:3: unsupported operation"),
        ("{mod}:int_arg", "int64", "TypeError: cannot differentiate"),
        ("missing_file.py:f", "float64", "no such file"),
    ],
)
def test_warm_errors_are_one_line_exit_2(capsys, cdir, fake_compiler, target, signature,
                                         message):
    target = target.format(mod=fake_compiler.mod)
    rc, out, err = run(capsys, "--cache-dir", cdir, "warm", target, "--transform", "grad",
                       "--signature", signature)
    assert rc == 2 and out == "" and "Traceback" not in err
    error_lines = [ln for ln in err.splitlines() if not ln.startswith("[")]
    assert len(error_lines) == 1 and message in error_lines[0], err
    assert fake_compiler.log == []


@pytest.mark.parametrize(
    "flags, expect, absent",
    [
        (["--ir"], ["TRACED loss ('array', 'float64')"], ["OPTIMIZED", "SOURCE", "----"]),
        (["--grad-ir"], ["OPTIMIZED hessian loss"], ["TRACED", "SOURCE"]),
        (["--source"], ["import numba", "# SOURCE hessian loss"], ["TRACED", "OPTIMIZED"]),
        ([], ["TRACED", "OPTIMIZED", "SOURCE", "# ---- traced IR ----"], ["digraph"]),
        (["--dot"], ["digraph G {", "x -> sin -> out;"], ["TRACED"]),
        (["--ir", "--dot"], ["TRACED", "digraph G {", "# ---- graph (Graphviz) ----"], []),
    ],
)
def test_inspect_prints_what_is_asked(capsys, cdir, fake_compiler, flags, expect, absent):
    rc, out, err = run(capsys, "--cache-dir", cdir, "inspect", f"{fake_compiler.mod}:loss",
                       "--transform", "hessian", "--signature", "float64[:], float64", *flags)
    assert rc == 0, err
    for text in expect:
        assert text in out
    for text in absent:
        assert text not in out
    assert fake_compiler.log == []  # inspect compiles nothing into the cache


def test_inspect_dot_without_graphviz(capsys, cdir, fake_compiler, tmp_path, monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "which", lambda name: None)
    rc, out, err = run(capsys, "--cache-dir", cdir, "inspect", f"{fake_compiler.mod}:loss",
                       "--signature", "float64", "--dot", "graph.png")
    assert rc == 0 and out == ""
    assert (tmp_path / "graph.dot").read_text().startswith("digraph G {")
    assert not (tmp_path / "graph.png").exists()
    assert len(err.strip().splitlines()) == 1 and "Graphviz 'dot' not found" in err


def test_inspect_dot_with_graphviz(capsys, cdir, fake_compiler, tmp_path, monkeypatch):
    import shutil

    fake_dot = tmp_path / "bin" / "dot"
    fake_dot.parent.mkdir()
    fake_dot.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import sys
        fmt, out = sys.argv[1], sys.argv[3]
        open(out, "w").write(fmt + "\\n" + sys.stdin.read())
    """))
    fake_dot.chmod(fake_dot.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setattr(shutil, "which", lambda name: str(fake_dot) if name == "dot" else None)
    rc, _, err = run(capsys, "--cache-dir", cdir, "inspect", f"{fake_compiler.mod}:loss",
                     "--signature", "float64", "--dot", "out.svg")
    assert rc == 0, err
    rendered = (tmp_path / "out.svg").read_text()
    assert rendered.startswith("-Tsvg\ndigraph G {")
    rc, _, _ = run(capsys, "--cache-dir", cdir, "inspect", f"{fake_compiler.mod}:loss",
                   "--signature", "float64", "--dot", "plain.gv")
    assert rc == 0 and (tmp_path / "plain.gv").read_text().startswith("digraph G {")


# ----------------------------------------------------------------------------------------
# Argument errors and closed pipes, as a shell sees them (a subprocess each)
# ----------------------------------------------------------------------------------------


def gradjit_cli(tmp_path, *argv, **kwargs):
    env = dict(os.environ, PYTHONPATH=REPO)
    env.pop("GRADJIT_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "gradjit", *argv], env=env, cwd=tmp_path,
                          timeout=120, check=False, **kwargs)


@pytest.mark.parametrize(
    "argv, message",
    [
        # --argnums with the default transform (jit), which has none
        (["inspect", "umod:f", "--argnums", "0", "--signature", "float64"], "--argnums"),
        (["warm", "umod:f", "--argnums", "0,1", "--signature", "float64, float64"], "--argnums"),
        (["inspect", "umod:f", "--transform", "jit", "--argnums", "1", "--signature", "float64"],
         "--argnums"),
        # signatures the reader would misread
        (["inspect", "umod:f", "--transform", "grad", "--signature", "float64[:"], "float64[:"),
        (["warm", "umod:f", "--signature", "float64[::], float64"], "float64[::]"),
        (["inspect", "umod:f", "--signature", "float64[:]], float64"], "invalid signature"),
        (["inspect", "umod:f", "--signature", "float64,,float64"], "invalid signature"),
        (["inspect", "umod:f", "--signature", "complex999"], "complex999"),
        (["inspect", "no_such_mod_xyz:f", "--signature", "float64"], "no_such_mod_xyz"),
        (["warm", "umod:missing", "--signature", "float64"], "missing"),
        (["cache", "prune", "--max-size", "lots"], "--max-size"),
        (["cache", "prune", "--max-size", "-5M"], "--max-size"),
        (["cache", "clear", "--older-than", "-3"], "--older-than"),
    ],
)
def test_argument_errors_in_a_shell_are_one_line_exit_2(tmp_path, argv, message):
    (tmp_path / "umod.py").write_text("def f(x, y=1.0):\n    return x * y\n")
    proc = gradjit_cli(tmp_path, "--cache-dir", str(tmp_path / "cache"), *argv,
                       capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == "" and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gradjit") and message in lines[0], lines


@pytest.mark.parametrize("argv", [["cache", "list"], ["cache", "list", "--json"],
                                  ["cache", "info"]])
def test_closed_pipe_ends_quietly(tmp_path, cdir, populated, argv):
    # ``gradjit cache list | head -1``: the reader is gone before gradjit writes (its read
    # end is closed at once, long before the child has imported anything)
    r, w = os.pipe()
    try:
        env = dict(os.environ, PYTHONPATH=REPO)
        proc = subprocess.Popen([sys.executable, "-m", "gradjit", "--cache-dir", cdir, *argv],
                                stdout=w, stderr=subprocess.PIPE, text=True, env=env,
                                cwd=tmp_path)
    finally:
        os.close(w)
        os.close(r)
    err = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(timeout=120) in (0, 1)
    assert err == ""


def test_unexpected_failure_is_one_line_exit_1(capsys, cdir, monkeypatch):
    def boom(self):
        raise RuntimeError("disk on fire")
    monkeypatch.delenv("GRADJIT_DEBUG", raising=False)
    monkeypatch.setattr(DiskCache, "entries", boom)
    rc, out, err = run(capsys, "--cache-dir", cdir, "cache", "list")
    assert rc == 1 and out == "" and "Traceback" not in err
    assert err.strip().splitlines() == [
        "gradjit: error: RuntimeError: disk on fire (GRADJIT_DEBUG=1 shows the traceback)"]
    monkeypatch.setenv("GRADJIT_DEBUG", "1")  # then the traceback, as asked
    with pytest.raises(RuntimeError, match="disk on fire"):
        cli.main(["--cache-dir", cdir, "cache", "list"])
