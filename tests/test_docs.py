"""The documentation site (docs/, mkdocs.yml): it builds with --strict, names every public name,
its generated coverage page lists every entry of numpy_api's table, and every snippet of the
"coming from" page runs (peers' snippets only where the peer is installed)."""

from __future__ import annotations

import glob
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import textwrap

import pytest

import gradjit as gj

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(REPO, "docs")
COMING_FROM = os.path.join(DOCS, "coming-from.md")
# a fence's title says whose code it is: gradjit's runs always, a peer's if it is installed
PEERS = {"PyTorch": "torch", "TensorFlow": "tensorflow", "JAX": "jax", "autograd": "autograd"}
FENCE = re.compile(r'^(?P<indent>[ \t]*)```python(?P<info>[^\n]*)\n(?P<body>.*?)^(?P=indent)```',
                   re.M | re.S)


def pages():
    return {os.path.basename(p): open(p).read() for p in glob.glob(os.path.join(DOCS, "*.md"))}


def gen_coverage():
    spec = importlib.util.spec_from_file_location("gen_coverage",
                                                  os.path.join(DOCS, "gen_coverage.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def snippets():
    """[(title, code)] of the python fences of the "coming from" page, in page order."""
    out = []
    for m in FENCE.finditer(open(COMING_FROM).read()):
        t = re.search(r'title="([^"]*)"', m["info"])
        out.append((t[1] if t else None, textwrap.dedent(m["body"])))
    return out


# ---- the build ---------------------------------------------------------------------------------


def test_mkdocs_build_strict(tmp_path):
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("material") is None:
        pytest.skip("mkdocs / mkdocs-material not installed (pip install -e '.[docs]')")
    # the figures the pages show: the examples' own where `make demo` wrote them, else
    # placeholders (the examples take ~30 s; test_examples.py runs them)
    figs = tmp_path / "figures"
    figs.mkdir()
    have = os.path.join(REPO, "examples", "figures")
    examples_src = "".join(open(p).read()
                           for p in glob.glob(os.path.join(REPO, "examples", "*.py")))
    shown = {n for text in pages().values() for n in re.findall(r"figures/(\w+\.png)", text)}
    for name in sorted(shown):
        assert f'"{name}"' in examples_src, f"docs show figures/{name}, which no example writes"
        src = os.path.join(have, name)
        if os.path.exists(src):
            shutil.copy(src, figs / name)
        else:
            (figs / name).write_bytes(b"\x89PNG\r\n\x1a\n")
    env = dict(os.environ, GRADJIT_FIGURES=str(figs), NO_MKDOCS_2_WARNING="1")
    site = tmp_path / "site"
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q",
                          "-d", str(site)], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    coverage = (site / "coverage" / "index.html").read_text()
    assert "np.linalg.solve" in coverage and "differentiable" in coverage
    assert (site / "figures" / "himmelblau.png").exists()


# ---- contents ----------------------------------------------------------------------------------


def test_every_public_name_appears_in_the_docs():
    text = "\n".join(pages().values())
    missing = [n for n in gj.__all__ if not re.search(rf"\b{re.escape(n)}\b", text)]
    assert not missing, f"public names the docs never mention: {missing}"


def test_coverage_lists_every_numpy_api_entry():
    from gradjit.compiler import numpy_api, primitives
    gc = gen_coverage()
    text = gc.render()
    rows = {}
    for line in text.splitlines():
        m = re.match(r"\| `(.+?)` \| ([^|]+) \|", line)
        if m:
            rows[m[1].replace("\\|", "|")] = m[2].strip()
    for fn in numpy_api.FUNCTIONS:
        name = gc.np_name(fn)
        assert name in rows, f"{name} (numpy_api.FUNCTIONS) missing from the coverage page"
        assert rows[name] != gc.LEGEND["?"], (
            f"{name}: no sample call traced it; add one to SAMPLES in docs/gen_coverage.py")
    for meth in numpy_api.METHODS:
        shown = "x.T" if meth == "T" else gc.DUNDERS.get(meth, f"x.{meth}()")
        assert shown in rows, f"{meth} (numpy_api.METHODS) missing from the coverage page"
    for name in primitives.ALL:
        assert name in rows, f"primitive {name} missing from the coverage page"
    # spot checks of the classification
    assert rows["np.sin"] == "yes" and rows["np.floor"].startswith("zero")
    assert rows["np.argmax"].startswith("no") and rows["x < y"].startswith("no")


# ---- the "coming from" page --------------------------------------------------------------------


def test_coming_from_covers_the_peer_idioms():
    text = open(COMING_FROM).read()
    for idiom in ["backward()", ".grad", "zero_grad", "retain_graph", "create_graph",
                  "torch.no_grad", "GradientTape", "tape.watch", "persistent=True", "jax.grad",
                  "jnp", "jax.jit", "lax.fori_loop"]:
        assert idiom in text, idiom
    titles = [t for t, _ in snippets()]
    assert None not in titles, "every python fence on the page needs a title= (gradjit or a peer)"
    assert set(titles) <= {"gradjit", *PEERS}, titles
    assert titles.count("gradjit") >= 10


RUNNER = """
import runpy, sys, traceback
failures = []
for path in sys.argv[1:]:
    try:
        runpy.run_path(path, run_name="__main__")
    except BaseException:
        failures.append(f"{path}:\\n{open(path).read()}\\n{traceback.format_exc()}")
print("\\n".join(failures))
sys.exit(1 if failures else 0)
"""


@pytest.mark.parametrize("who", ["gradjit", *PEERS])
def test_coming_from_snippets_run(who, tmp_path):
    if who != "gradjit" and importlib.util.find_spec(PEERS[who]) is None:
        pytest.skip(f"{PEERS[who]} is not installed: {who} snippets not run")
    codes = [code for t, code in snippets() if t == who]
    assert codes, f"no {who} snippets"
    # each snippet a file of its own (gradjit reads the source), run in a fresh namespace;
    # one process per library, so it is imported once
    paths = []
    for k, code in enumerate(codes):
        paths.append(str(tmp_path / f"{who.lower()}_snippet_{k}.py"))
        with open(paths[-1], "w") as f:
            f.write(code)
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", RUNNER, *paths], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
