"""mkdocs hooks (mkdocs.yml ``hooks:``): the generated coverage page and the example figures
enter the site as generated files, so nothing generated is written into docs/.

- ``coverage.md``: rendered by docs/gen_coverage.py from gradjit's tables at every build.
- ``figures/*.png``: the PNGs the examples write (``make demo``) to ``$GRADJIT_FIGURES`` or
  ``examples/figures/``; a page linking a missing one fails ``mkdocs build --strict``.
- ``benchmark-results.md`` and ``bench/*.png``: the report ``make bench`` writes to
  benchmarks/results/ (results.md and its figures), or a page saying how to make it.
"""

import importlib.util
import logging
import os

from mkdocs.structure.files import File

HERE = os.path.dirname(os.path.abspath(__file__))
log = logging.getLogger("mkdocs.hooks.gradjit")


def figures_dir():
    return os.environ.get("GRADJIT_FIGURES") or os.path.join(
        os.path.dirname(HERE), "examples", "figures")


def gen_coverage():
    """docs/gen_coverage.py as a module (it imports gradjit's compiler, not numba)."""
    spec = importlib.util.spec_from_file_location("gen_coverage",
                                                  os.path.join(HERE, "gen_coverage.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def on_files(files, config):
    stale = files.get_file_from_path("coverage.md")  # written by hand: regenerate anyway
    if stale is not None:
        files.remove(stale)
    files.append(File.generated(config, "coverage.md", content=gen_coverage().render()))
    d = figures_dir()
    pngs = sorted(n for n in os.listdir(d) if n.endswith(".png")) if os.path.isdir(d) else []
    if not pngs:
        log.warning("no example figures in %s: run `make demo` first (`make docs` does)", d)
    for name in pngs:
        files.append(File.generated(config, f"figures/{name}",
                                    abs_src_path=os.path.join(d, name)))
    _benchmark_report(files, config)
    return files


def _benchmark_report(files, config):
    """The last `make bench` report of this checkout, with its figures (they belong to the
    machine that made them, so they are never committed)."""
    d = os.path.join(os.path.dirname(HERE), "benchmarks", "results")
    report = os.path.join(d, "results.md")
    if not os.path.isfile(report):
        text = ("# Benchmark results\n\nNo report in this checkout yet: `make bench` writes "
                "`benchmarks/results/results.md` and its figures, and the next `make docs` "
                "shows them here. The README quotes a run.\n")
    else:
        with open(report) as f:
            text = f.read().replace("](", "](bench/")
        for name in sorted(n for n in os.listdir(d) if n.endswith(".png")):
            files.append(File.generated(config, f"bench/{name}",
                                        abs_src_path=os.path.join(d, name)))
    files.append(File.generated(config, "benchmark-results.md", content=text))
