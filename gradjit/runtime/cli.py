"""The ``gradjit`` command line (also ``python -m gradjit``).

One argparse subparser and one small handler per command::

    gradjit [--cache-dir DIR] cache list [--json]
    gradjit cache info [--json]
    gradjit cache clear [--older-than DAYS] [--function NAME]
    gradjit cache prune --max-size SIZE
    gradjit cache verify
    gradjit warm MODULE:FUNCTION --transform T --signature "float64[:], float64" [...]
    gradjit inspect MODULE:FUNCTION --transform T --signature S [--ir] [--grad-ir]
                                     [--source] [--dot [OUT]]

Bad arguments give one line on stderr and exit status 2, never a traceback.  This module
stays light to import: the compiler and numba are imported only by ``warm``/``inspect``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time

from gradjit.runtime.diskcache import GradjitError, format_size, parse_size

TRANSFORMS = ("jit", "grad", "value_and_grad", "jacobian", "hessian")
WITH_ARGNUMS = ("grad", "value_and_grad", "jacobian", "hessian")  # jit has no argnums
EPILOG = "Environment: GRADJIT_CACHE_DIR, GRADJIT_DISABLE_CACHE=1, GRADJIT_CACHE_MAX_SIZE."


class UsageError(Exception):
    """Bad arguments or an unusable MODULE:FUNCTION: one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        message = " ".join(str(message).split())
        raise UsageError(f"{self.prog}: error: {message} (see '{self.prog} --help')")


# ----------------------------------------------------------------------------------------
# Argument types
# ----------------------------------------------------------------------------------------


def _size(text):
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _days(text):
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:  # also rejects nan
        raise argparse.ArgumentTypeError(f"invalid number of days {text!r}")
    return value


# ----------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------


def _open_cache(args):
    from gradjit.runtime.diskcache import DiskCache

    return DiskCache(getattr(args, "cache_dir", None))


def _when(t):
    if isinstance(t, (int, float)) and t > 0:
        return time.strftime("%Y-%m-%d %H:%M", time.localtime(t))
    return str(t) if t else "-"


def _location(info):
    path = info.get("file") or "?"
    home = os.path.expanduser("~")
    if home not in ("~", "/") and str(path).startswith(home + os.sep):
        path = "~" + str(path)[len(home) :]
    line = info.get("line")
    return f"{path}:{line}" if line is not None else str(path)


def _table(rows, header):
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        cells = [str(c).ljust(w) for c, w in zip(row, widths)]
        print("  ".join(cells).rstrip())


def load_target(spec: str):
    """``MODULE:FUNCTION`` (or ``path/to/file.py:FUNCTION``) -> the callable.

    The current directory is importable, as with ``python -m``.  Raises UsageError.
    """
    import importlib
    import importlib.util

    modname, sep, attr = spec.rpartition(":")
    if not sep or not modname or not attr:
        raise UsageError(f"expected MODULE:FUNCTION, got {spec!r}")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        if modname.endswith(".py") or os.sep in modname:
            name = os.path.splitext(os.path.basename(modname))[0]
            if not os.path.isfile(modname):
                raise UsageError(f"cannot import {modname!r}: no such file")
            file_spec = importlib.util.spec_from_file_location(name, modname)
            module = importlib.util.module_from_spec(file_spec)
            sys.modules[name] = module
            file_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(modname)
    except UsageError:
        raise
    except ImportError as e:
        raise UsageError(f"cannot import module {modname!r}: {e}") from None
    except Exception as e:  # noqa: BLE001 - the user's module failed: report it in one line
        raise UsageError(f"importing {modname!r} failed: {type(e).__name__}: {e}") from None
    obj = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise UsageError(f"module {modname!r} has no attribute {attr!r}") from None
    if not callable(obj):
        raise UsageError(f"{spec!r} is not a function")
    return obj


def _transformed(args):
    fn = load_target(args.target)
    import gradjit

    transform = getattr(gradjit, args.transform, None)
    if transform is None:
        raise UsageError(f"this gradjit has no transform {args.transform!r}")
    options = {}
    if args.argnums is not None:
        if args.transform not in WITH_ARGNUMS:
            raise UsageError(f"--argnums needs --transform {', '.join(WITH_ARGNUMS[:-1])} or "
                             f"{WITH_ARGNUMS[-1]} ({args.transform} has no argnums)")
        options["argnums"] = args.argnums
    if args.compile_target is not None:
        options["target"] = args.compile_target
    try:
        return transform(fn, **options)
    except GradjitError:
        raise
    except (TypeError, ValueError) as e:  # options the transform rejects
        raise UsageError(f"{type(e).__name__}: {' '.join(str(e).split())}") from None


# one argument type: a name, or a name and ':' per axis ("float64[:, :]")
_SIG_PART = re.compile(r"\s*[A-Za-z_][\w.]*\s*(\[\s*:\s*(,\s*:\s*)*\])?\s*")


def _examples(signature):
    import importlib

    # The signature reader is lenient ("float64[::]", "float64[:" read as something):
    # take only what it cannot misread.
    parts = signature.split(",") if signature.strip() else []
    merged = []  # the commas inside brackets rejoined
    for p in parts:
        if merged and merged[-1].count("[") > merged[-1].count("]"):
            merged[-1] += "," + p
        else:
            merged.append(p)
    for p in merged:
        if not _SIG_PART.fullmatch(p):
            raise UsageError(f"invalid signature {signature!r}: cannot read {p.strip()!r} "
                             "(write e.g. \"float64[:, :], float64\")")
    module = importlib.import_module("gradjit.runtime.signature")
    try:
        return module.examples_from_signature(signature)
    except GradjitError:
        raise
    except (ValueError, TypeError) as e:
        raise UsageError(f"invalid signature {signature!r}: {e}") from None


def _lower(transformed, examples):
    try:
        return transformed.lower(*examples)
    except GradjitError:
        raise
    except (TypeError, ValueError) as e:  # e.g. grad with respect to an integer argument
        raise UsageError(f"{type(e).__name__}: {' '.join(str(e).split())}") from None


def _argnums(text):
    try:
        nums = tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        nums = ()
    if not nums:
        raise argparse.ArgumentTypeError(f"invalid argnums {text!r} (e.g. 0 or 0,1)")
    return nums[0] if len(nums) == 1 else nums


# ----------------------------------------------------------------------------------------
# Handlers: one per command, each returns the exit status
# ----------------------------------------------------------------------------------------


def cmd_cache_list(args):
    cache = _open_cache(args)
    entries = sorted(cache.entries(), key=lambda e: e["last_used"], reverse=True)
    if args.json:
        print(json.dumps(entries, indent=2, sort_keys=True, default=str))
        return 0
    if not entries:
        print(f"no entries in {cache.directory}")
        return 0
    # The target column appears once some entry is not for the CPU (e.g. "cuda sm_90": the
    # compute capability its kernels were built for).
    targets = [" ".join(x for x in (e.get("target") or "cpu", e.get("capability")) if x)
               for e in entries]
    show = any(t != "cpu" for t in targets)
    rows = [
        (
            e.get("qualname", "?"),
            _location(e),
            e.get("transform", "?"),
            *((t,) if show else ()),
            e.get("signature", "?"),
            format_size(e["size"]),
            _when(e["last_used"]),
        )
        for e, t in zip(entries, targets)
    ]
    _table(rows, ("FUNCTION", "FILE:LINE", "TRANSFORM", *(("TARGET",) if show else ()),
                  "SIGNATURE", "SIZE", "LAST USED"))
    return 0


def cmd_cache_info(args):
    cache = _open_cache(args)
    entries = cache.entries()
    total = sum(e["size"] for e in entries)
    stats = cache.stats()
    max_size = os.environ.get("GRADJIT_CACHE_MAX_SIZE") or None
    info = {
        "directory": cache.directory,
        "enabled": cache.enabled,
        "disabled_reason": cache.disabled_reason,
        "entries": len(entries),
        "manifests": cache.manifest_count(),
        "total_size": total,
        "hits": stats["hits"],
        "misses": stats["misses"],
        "max_size": max_size,
    }
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
        return 0
    enabled = "yes" if cache.enabled else f"no ({cache.disabled_reason})"
    lines = [
        ("directory", cache.directory),
        ("enabled", enabled),
        ("entries", len(entries)),
        ("manifests", f"{info['manifests']} (traces a new process can skip)"),
        ("total size", f"{format_size(total)} ({total} bytes)"),
        ("hits", stats["hits"]),
        ("misses", stats["misses"]),
        ("max size", f"{max_size} (GRADJIT_CACHE_MAX_SIZE)" if max_size else "unlimited"),
    ]
    for name, value in lines:
        print(f"{name + ':':<12} {value}")
    return 0


def cmd_cache_clear(args):
    cache = _open_cache(args)
    n = cache.clear(older_than_days=args.older_than, function=args.function)
    print(f"removed {n} {'entry' if n == 1 else 'entries'} from {cache.directory}")
    return 0


def cmd_cache_prune(args):
    cache = _open_cache(args)
    n = cache.prune(args.max_size)
    size = cache.total_size()
    print(
        f"removed {n} {'entry' if n == 1 else 'entries'}; "
        f"cache size now {format_size(size)} (limit {format_size(args.max_size)})"
    )
    return 0


def cmd_cache_verify(args):
    cache = _open_cache(args)
    problems = cache.verify()
    for key, problem in problems:
        print(f"{key}: {problem} (removed)")
    remaining = len(cache.entries())
    print(f"{remaining} good {'entry' if remaining == 1 else 'entries'}, {len(problems)} damaged")
    return 0


def cmd_warm(args):
    transformed = _transformed(args)
    cache = _open_cache(args)
    if not cache.enabled:
        print(
            f"gradjit: warning: the disk cache is off ({cache.disabled_reason}); "
            "kernels are compiled but not kept",
            file=sys.stderr,
        )
    n = len(args.signature)
    start = time.perf_counter()
    for i, signature in enumerate(args.signature, 1):
        examples = _examples(signature)
        print(f"[{i}/{n}] {args.transform} {args.target} ({signature}) ...", end="",
              file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        try:
            low = _lower(transformed, examples)
            entry = low.compile()
            full = getattr(entry, "full", None)
            if full is not None and full is not entry.kernel:  # ahead of time: the general
                low.compile_kernel(full)                      # version too
        except BaseException:
            print(" failed", file=sys.stderr, flush=True)
            raise
        print(f" {time.perf_counter() - t0:.2f} s", file=sys.stderr, flush=True)
    elapsed = time.perf_counter() - start
    print(f"warmed {n} {'kernel' if n == 1 else 'kernels'} of {args.target} "
          f"into {cache.directory} in {elapsed:.2f} s")
    return 0


def _write_dot(text, out):
    import shutil
    import subprocess

    fmt = os.path.splitext(out)[1].lstrip(".").lower()
    if fmt in ("", "dot", "gv"):
        with open(out, "w") as f:
            f.write(text)
        print(f"wrote {out}", file=sys.stderr)
        return 0
    dot = shutil.which("dot")
    if dot is None:
        dot_path = os.path.splitext(out)[0] + ".dot"
        with open(dot_path, "w") as f:
            f.write(text)
        print(f"gradjit: Graphviz 'dot' not found; wrote {dot_path} "
              f"(install Graphviz, then: dot -T{fmt} {dot_path} -o {out})", file=sys.stderr)
        return 0
    proc = subprocess.run([dot, f"-T{fmt}", "-o", out], input=text, text=True,
                          capture_output=True, check=False)
    if proc.returncode != 0:
        detail = " ".join(proc.stderr.split()) or f"exit status {proc.returncode}"
        print(f"gradjit: error: dot failed: {detail}", file=sys.stderr)
        return 1
    print(f"wrote {out}", file=sys.stderr)
    return 0


def cmd_inspect(args):
    transformed = _transformed(args)
    lowered = _lower(transformed, _examples(args.signature))
    wanted = [
        ("traced IR", "traced_ir", args.ir),
        ("differentiated and optimised IR", "optimized_ir", args.grad_ir),
        ("generated numba source", "source", args.source),
    ]
    if not any(flag for *_, flag in wanted) and args.dot is None:
        wanted = [(title, attr, True) for title, attr, _ in wanted]
    sections = [(title, attr) for title, attr, flag in wanted if flag]
    for title, attr in sections:
        if len(sections) > 1 or args.dot == "-":
            print(f"# ---- {title} ----")
        print(str(getattr(lowered, attr)).rstrip("\n"))
    if args.dot is None:
        return 0
    text = lowered.dot()
    if args.dot == "-":
        if sections:
            print("# ---- graph (Graphviz) ----")
        print(text.rstrip("\n"))
        return 0
    return _write_dot(text, args.dot)


# ----------------------------------------------------------------------------------------
# Parser
# ----------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument(
        "--cache-dir",
        metavar="DIR",
        default=argparse.SUPPRESS,
        help="cache directory (default: $GRADJIT_CACHE_DIR, else the user cache directory)",
    )
    parser = _Parser(
        prog="gradjit",
        description="gradjit: inspect and manage the compile cache, warm it ahead of time, "
        "and look at what gradjit generates.",
        epilog=EPILOG,
        parents=[common],
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    cache = commands.add_parser("cache", help="manage the on-disk compile cache",
                                description="Manage the on-disk compile cache.",
                                parents=[common], epilog=EPILOG)
    actions = cache.add_subparsers(dest="action", metavar="ACTION", required=True)

    p = actions.add_parser("list", help="one row per entry", parents=[common],
                           description="List the cache entries (compiled kernels), most recently "
                           "used first. The manifests that let a new process skip tracing "
                           "are counted by 'cache info', not listed.")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(handler=cmd_cache_list)

    p = actions.add_parser("info", help="directory, entry count, size, hits/misses",
                           parents=[common], description="Summarize the cache.")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=cmd_cache_info)

    p = actions.add_parser("clear", help="remove entries", parents=[common],
                           description="Remove all entries, or those selected by the options.")
    p.add_argument("--older-than", type=_days, metavar="DAYS",
                   help="only entries not used for DAYS days")
    p.add_argument("--function", metavar="NAME",
                   help="only entries of this function (qualname, last name, or glob)")
    p.set_defaults(handler=cmd_cache_clear)

    p = actions.add_parser("prune", help="remove least recently used entries down to a size",
                           parents=[common],
                           description="Remove least recently used entries down to SIZE.")
    p.add_argument("--max-size", type=_size, required=True, metavar="SIZE",
                   help="e.g. 500M, 1.5G, or bytes")
    p.set_defaults(handler=cmd_cache_prune)

    p = actions.add_parser("verify", help="check every entry, remove damaged ones",
                           parents=[common],
                           description="Check every entry's checksums; report and remove "
                           "damaged entries.")
    p.set_defaults(handler=cmd_cache_verify)

    def target_options(p, many):
        p.add_argument("target", metavar="MODULE:FUNCTION",
                       help="function to compile, e.g. mymodel:loss or path/to/file.py:loss")
        p.add_argument("--transform", choices=TRANSFORMS, default="jit",
                       help="transform to apply (default: jit)")
        p.add_argument("--argnums", type=_argnums, metavar="N[,N...]",
                       help="argnums of the transform (e.g. 0 or 0,1)")
        p.add_argument("--target", dest="compile_target", metavar="TARGET",
                       choices=("auto", "cpu", "parallel", "cuda"),
                       help="the target to compile for: auto, cpu, parallel or cuda (with "
                       "--source, cuda prints the CUDA kernels and their host function)")
        if many:
            p.add_argument("--signature", action="append", required=True, metavar="SIG",
                           help='argument types, e.g. "float64[:], float64"; repeatable')
        else:
            p.add_argument("--signature", required=True, metavar="SIG",
                           help='argument types, e.g. "float64[:], float64"')

    p = commands.add_parser("warm", help="compile ahead of time into the cache",
                            parents=[common], epilog=EPILOG,
                            description="Compile FUNCTION for each signature into the disk "
                            "cache (for deployment).")
    target_options(p, many=True)
    p.set_defaults(handler=cmd_warm)

    p = commands.add_parser("inspect", help="show the IR, generated source or graph",
                            parents=[common],
                            description="Show what gradjit makes of FUNCTION for one "
                            "signature (all text forms when no option is given).")
    target_options(p, many=False)
    p.add_argument("--ir", action="store_true", help="the traced IR")
    p.add_argument("--grad-ir", action="store_true", help="the differentiated, optimised IR")
    p.add_argument("--source", action="store_true",
                   help="the generated numba (or numba-cuda, with --target cuda) source")
    p.add_argument("--dot", nargs="?", const="-", metavar="OUT",
                   help="a Graphviz graph; to stdout, or rendered to OUT (e.g. graph.png)")
    p.set_defaults(handler=cmd_inspect)
    return parser


# ----------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"gradjit: warning: {message}", file=sys.stderr)


def main(argv=None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 failure, 2 bad usage)."""
    import warnings

    parser = build_parser()
    saved_env = os.environ.get("GRADJIT_CACHE_DIR")
    saved_show = warnings.showwarning
    warnings.showwarning = _show_warning
    try:
        args = parser.parse_args(argv)
        cache_dir = getattr(args, "cache_dir", None)
        if cache_dir is not None:
            # Also seen by the runtime's own cache, which warm/inspect use.
            os.environ["GRADJIT_CACHE_DIR"] = os.path.abspath(cache_dir)
        status = args.handler(args)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return status
    except BrokenPipeError:
        # the reader went away (``gradjit cache list | head -1``): stop quietly. Python's
        # recipe: stdout to devnull, so that the flush at exit does not fail again.
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):  # stdout is no file (captured): nothing left to flush
            pass
        return 1
    except SystemExit as e:  # --help
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    except UsageError as e:
        print(f"{e}" if str(e).startswith("gradjit") else f"gradjit: error: {e}",
              file=sys.stderr)
        return 2
    except GradjitError as e:
        msg = " ".join(str(e).split())
        print(f"gradjit: error: {type(e).__name__}: {msg}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"gradjit: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("gradjit: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - a failure, still one line (GRADJIT_DEBUG: traceback)
        if os.environ.get("GRADJIT_DEBUG", "0").strip() not in ("", "0"):
            raise
        msg = " ".join(str(e).split())
        print(f"gradjit: error: {type(e).__name__}: {msg} (GRADJIT_DEBUG=1 shows the traceback)",
              file=sys.stderr)
        return 1
    finally:
        warnings.showwarning = saved_show
        if saved_env is None:
            os.environ.pop("GRADJIT_CACHE_DIR", None)
        else:
            os.environ["GRADJIT_CACHE_DIR"] = saved_env
