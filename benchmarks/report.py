"""The benchmark report `make bench` writes: `results.md` (the printed tables with the
machine, versions, command and date) and PNG figures, into `benchmarks/results/`
(git-ignored: figures and tables belong to the machine that made them).

Figures (matplotlib, from the `examples` extra; skipped with a message without it):

- `elementwise_scaling.png`: time per gradient against n for the elementwise chain (W3a),
  every contestant, log-log; from a sweep of sizes run for the figure;
- `overhead.png`: time per call of the scalar gradient (W1) per framework: what a call costs
  when there is no work;
- `first_result.png`: define -> first gradient in a fresh process per framework (the cold
  table).
"""

from __future__ import annotations

import datetime
import io
import os
import sys

SWEEP_GROUP = "W3a"
SWEEP_SIZES = (10**3, 10**4, 10**5, 10**6, 10**7)
QUICK_SWEEP_SIZES = (10**3, 10**4, 10**5)


class Tee(io.TextIOBase):
    """Writes go to the terminal and are kept for results.md."""

    def __init__(self, stream):
        self.stream, self.kept = stream, io.StringIO()

    def write(self, text):
        self.kept.write(text)
        return self.stream.write(text)

    def flush(self):
        self.stream.flush()


class Report:
    def __init__(self, out_dir, argv):
        self.out_dir, self.argv = out_dir, argv
        self.times = {}  # (group, size) -> {contestant: seconds}
        self.sweep = {}  # size -> {contestant: seconds}
        self.cold = {}  # group -> {contestant: seconds}

    def add_case(self, case, cells, into=None):
        row = {name: c.seconds for name, c in cells.items() if c.seconds is not None}
        (self.times if into is None else into)[(case.workload.group, case.size)] = row

    def add_cold(self, group, contestant, seconds):
        self.cold.setdefault(group, {})[contestant] = seconds

    def write(self, text):
        os.makedirs(self.out_dir, exist_ok=True)
        figures = self._figures()
        stamp = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
        lines = ["# gradjit benchmarks", "",
                 f"Run {stamp} with `{' '.join(['python benchmarks/run.py'] + self.argv)}` "
                 "(`make bench`). Medians; machine, versions and load in the header below.",
                 "", "```", text.rstrip(), "```", ""]
        lines += [f"![{name}]({name})" for name in figures]
        path = os.path.join(self.out_dir, "results.md")
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        print(f"report: {os.path.relpath(path)}"
              + (f", figures: {', '.join(figures)}" if figures else ""), file=sys.stderr)

    # -- figures -------------------------------------------------------------------------------

    def _figures(self):
        try:
            import matplotlib
        except ImportError:
            print("figures skipped: matplotlib is not installed (pip install gradjit[examples])",
                  file=sys.stderr)
            return []
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        made = []
        for name, draw in (("elementwise_scaling.png", self._scaling),
                           ("overhead.png", self._overhead),
                           ("first_result.png", self._first_result)):
            fig = draw(plt)
            if fig is not None:
                fig.savefig(os.path.join(self.out_dir, name), dpi=110, bbox_inches="tight")
                plt.close(fig)
                made.append(name)
        return made

    def _scaling(self, plt):
        if not self.sweep:
            return None
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        names = sorted({n for row in self.sweep.values() for n in row})
        for name in names:
            pts = sorted((n, row[name]) for n, row in self.sweep.items() if name in row)
            ax.loglog([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
        ax.set_xlabel("n (elements)")
        ax.set_ylabel("time per gradient (s)")
        ax.set_title("gradient of np.sum(x**2 + x**3 + 5) (W3a)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        return fig

    def _bars(self, plt, values, title, ylabel):
        values = {k: v for k, v in values.items() if v is not None}
        if not values:
            return None
        names = sorted(values, key=values.get)
        fig, ax = plt.subplots(figsize=(6.4, 3.8))
        ax.bar(names, [values[n] for n in names], color="tab:blue")
        ax.set_yscale("log")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        for k, n in enumerate(names):
            ax.annotate(_fmt(values[n]), (k, values[n]), ha="center", va="bottom", fontsize=8)
        return fig

    def _overhead(self, plt):
        row = self.times.get(("W1", None))
        if not row:
            return None
        return self._bars(plt, row, "per-call cost of a scalar gradient (W1)",
                          "time per call (s)")

    def _first_result(self, plt):
        if not self.cold:
            return None
        group = "W2" if "W2" in self.cold else sorted(self.cold)[0]
        return self._bars(plt, self.cold[group],
                          f"define -> first gradient in a fresh process ({group})",
                          "seconds")


def _fmt(s):
    for unit, k in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6), ("ns", 1e-9)):
        if s >= k:
            return f"{s / k:.3g} {unit}"
    return f"{s:.2g} s"
