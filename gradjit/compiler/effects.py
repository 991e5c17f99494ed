"""Python side effects of a traced function on state outside it (``self.nfev += 1``,
``log.append(k)``, ``self.cache[k] = v``).

A compiled call runs no Python, so such a statement is not performed while tracing: it is
compiled on its own into a small function of the names it reads (``self``, ``k``) and recorded;
the runtime replays the recorded statements after every call of the kernel, in program order
(``Effect.run``). Names bound to objects reached from outside (``self``, a global) are read
again at each replay through their access path; other static locals (a loop index) are the
values they had while tracing. A statement whose operands include traced values cannot be
replayed outside the kernel: the interpreter raises a ``TraceError`` (``traced_operand``).
"""

from __future__ import annotations

import ast
import copy
import types

# Methods that change a container in place (list, dict, set, deque).
MUTATORS = frozenset((
    "append", "extend", "insert", "pop", "remove", "clear", "update", "add", "setdefault",
    "popitem", "discard", "sort", "reverse", "appendleft", "extendleft", "popleft",
    "difference_update", "intersection_update", "symmetric_difference_update"))


class Effect:
    """One recorded statement: ``fn(*binds)`` replays it (a bind with ``get`` is an access
    path, read again at each replay)."""

    __slots__ = ("fn", "binds", "where")

    def __init__(self, fn, binds, where):
        self.fn, self.binds, self.where = fn, binds, where

    def run(self):
        self.fn(*[b.get() if isinstance(b, Reread) else b for b in self.binds])

    def __repr__(self):
        return f"<effect at {self.where}>"


class Reread:
    """A replay argument read again at each replay (``get`` on an access path)."""

    __slots__ = ("path",)

    def __init__(self, path):
        self.path = path

    def get(self):
        return self.path.get()


def run_all(effects):
    for e in effects:
        e.run()


def changed(node):
    """The expressions naming what ``node`` may change outside the trace: the objects whose
    attributes or items it assigns, or the container whose mutating method it calls as a
    statement. None: the statement changes only names (or is no such statement)."""
    if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        if isinstance(node, ast.AnnAssign) and node.value is None:
            return None
        if not targets or not all(isinstance(t, (ast.Attribute, ast.Subscript)) for t in targets):
            return None
        return [t.value for t in targets]
    if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call) and \
            isinstance(node.value.func, ast.Attribute) and node.value.func.attr in MUTATORS:
        return [node.value.func.value]
    return None


def chain_root(expr):
    """The name at the root of ``a.b[k].c`` (attributes and items only), else None."""
    while isinstance(expr, (ast.Attribute, ast.Subscript)):
        expr = expr.value
    return expr.id if isinstance(expr, ast.Name) else None


def loaded_names(node):
    """Names ``node`` reads, in order of first use."""
    out = []
    for n in ast.walk(node):
        if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load) and n.id not in out:
            out.append(n.id)
    return out


def replay_function(node, params, filename, globals_):
    """``node`` compiled as the body of ``def _gj_effect(*params)`` with the user's module
    globals (so its other names resolve as they would in the function), keeping its lines."""
    args = ast.arguments(posonlyargs=[], args=[ast.arg(arg=p) for p in params], vararg=None,
                         kwonlyargs=[], kw_defaults=[], kwarg=None, defaults=[])
    fdef = ast.FunctionDef(name="_gj_effect", args=args, body=[copy.deepcopy(node)],
                           decorator_list=[], returns=None, type_comment=None)
    ast.copy_location(fdef, node)
    mod = ast.Module(body=[fdef], type_ignores=[])
    ast.fix_missing_locations(mod)
    code = compile(mod, filename, "exec")
    fcode = next(c for c in code.co_consts if isinstance(c, types.CodeType))
    return types.FunctionType(fcode, globals_, "_gj_effect")


def traced_operand(stmt, name):
    """Why a statement changing outside state cannot use the traced value ``name``."""
    return (f"'{stmt}' changes Python state outside the function using '{name}', a value "
            "computed by the compiled function: Python side effects are replayed at every "
            "call outside the kernel and cannot see its values. Return the value instead "
            "(e.g. with has_aux=True) and update the state after the call")


def under_dynamic(stmt):
    return (f"'{stmt}' changes Python state outside the function under an if or a loop whose "
            "condition or trip count depends on traced values: whether it runs is known only "
            "when the compiled function runs. Move it out of the if/loop (or make the condition "
            "static), or return what it needs and update the state after the call")


def read_after_write(what, where):
    return (f"'{what}' is read after the function changed it (at {where}): that change is "
            "replayed after each call, so the trace cannot see it. Read it before changing it, "
            "or keep the new value in a local variable")
