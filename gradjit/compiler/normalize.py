"""Early exits as flag variables: an AST -> AST pass run on a function before it is traced.

The interpreter (``frontend.py``) stages structured code: an ``if`` whose test is known only at
run time becomes a ``cond``, a loop whose trip count is becomes a ``while``/``for`` region. A
``break``, ``continue`` or ``return`` under such a test jumps out of a region, which the IR
cannot say. This pass rewrites them into ordinary variables, so that the interpreter only
ever sees straight-line code, ifs and loops (as tangent's front end normalises its input before
building the CFG, tangent/anf.py):

* ``break`` sets the loop's flag ``<p>brk<n> = True`` (bound to False just before the loop);
  a ``while`` loop's test becomes ``not <flags> and (test)``; a ``for`` loop iterates over a
  temporary and assigns the user's target inside an iteration guard ``if not <flags>:``;
* ``continue`` sets ``<p>cont<n> = True`` (bound to False at the start of each iteration);
* ``return v`` sets ``<p>ret = True`` and ``<p>retval = v`` (the flag bound to False at the
  function's start); a return that ends the function (the last statement, or the last of a
  branch of a last ``if``) only sets ``<p>retval``, and every path that reaches the end
  without a return sets ``<p>retval = None``. The function then ends with
  ``return <p>retval``;
* whatever follows a statement that may set a flag runs under ``if not (<flags>):``; code
  after a statement that always exits is dropped (Python never runs it);
* a loop's ``else`` clause runs after the loop under ``if not <brk>:``.

A function whose only ``return`` is its last statement, and whose loops have no ``break``,
``continue`` or ``else``, is handed back unchanged. The result is valid Python with the
semantics of the input (the tests exec both); the names use a prefix (``_gj_``) no name of the
function starts with. Every node made has the location of the statement it stands for, so
errors still name the user's file:line.

The pass also notes on each loop it changes a ``LoopInfo`` (the ``gj_loop`` attribute) and on
the function the name of its return value (``gj_retval``, None when returns were left as they
were). These let the interpreter do better than a literal reading of the rewritten code (stop
unrolling a loop once its flag is known to be set, trace a loop with an exit as a ``while``,
not carry a flag from one iteration to the next that each iteration sets afresh); they never
change what the code computes.
"""

from __future__ import annotations

import ast
import copy
from dataclasses import dataclass

__all__ = ["LoopInfo", "normalize"]

_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)
_LOOPS = (ast.For, ast.While)


@dataclass(frozen=True)
class LoopInfo:
    """What the pass knows of a loop it rewrote (``loop.gj_loop``).

    ``exits``: the flags that end the loop early (its break flag, then the return flag), all
    bound before the loop and false whenever an iteration starts. ``test``: a while loop's own
    test (``loop.test`` is ``not (exits) and (test)``). ``target``: a for loop's own target
    (``loop.target`` is then a temporary, assigned to it inside the iteration guard).
    ``scratch``: names the pass binds inside the loop before any use in each iteration (the
    continue flag, the temporary, the flags of loops nested in it): never carried from one
    iteration to the next."""

    exits: tuple = ()
    test: ast.expr | None = None
    target: ast.expr | None = None
    scratch: tuple = ()


def normalize(fn):
    """``fn`` (a FunctionDef) with its early exits made flag variables; ``fn`` itself is not
    changed (it is handed back when there is nothing to rewrite). The result carries
    ``gj_retval``: the name of the return value (absent or None: returns left as they were)."""
    if not _needs_pass(fn):
        return fn
    out = copy.deepcopy(fn)
    p = _Pass(out)
    body, _, _ = p.block(out.body, tail=p.returns)
    if p.returns:
        if p.used_ret:
            body.insert(0, _at(_assign(p.ret, False), out.body[0]))
        body.append(_at(ast.Return(value=_load(p.retval)), fn))
    out.body = body
    out.gj_retval = p.retval if p.returns else None
    ast.fix_missing_locations(out)
    return out


# ---------------------------------------------------------------------------------------------
# What a function holds
# ---------------------------------------------------------------------------------------------


def _walk_own(nodes, skip_loops=False):
    """The nodes under ``nodes`` that belong to this function (not to a def, lambda or class
    nested in it); with ``skip_loops``, not into the bodies of nested loops either (their
    ``else`` clauses belong to the enclosing loop)."""
    stack = list(nodes)[::-1]
    while stack:
        n = stack.pop()
        yield n
        if isinstance(n, _SCOPES):
            continue
        if skip_loops and isinstance(n, _LOOPS):
            kids = ([n.test] if isinstance(n, ast.While) else [n.target, n.iter]) + n.orelse
        else:
            kids = list(ast.iter_child_nodes(n))
        stack.extend(kids[::-1])


def _owns(body, kind):
    """Whether a ``kind`` (ast.Break / ast.Continue) in ``body`` belongs to the loop of that body."""
    return any(isinstance(n, kind) for n in _walk_own(body, skip_loops=True))


def _returns_early(fn):
    """Whether ``fn`` has a return other than its last statement."""
    last = fn.body[-1] if fn.body else None
    return any(isinstance(n, ast.Return) and n is not last for n in _walk_own(fn.body))


def _needs_pass(fn):
    return _returns_early(fn) or any(
        isinstance(n, (ast.Break, ast.Continue)) or (isinstance(n, _LOOPS) and n.orelse)
        for n in _walk_own(fn.body))


def _identifiers(fn):
    """Every name-like string in ``fn`` (variables, arguments, attributes, imports)."""
    out = set()
    for n in ast.walk(fn):
        if isinstance(n, ast.Constant):
            continue
        for _, v in ast.iter_fields(n):
            for s in (v if isinstance(v, list) else [v]):
                if isinstance(s, str):
                    out.add(s)
    return out


# ---------------------------------------------------------------------------------------------
# Building nodes
# ---------------------------------------------------------------------------------------------


def _at(node, src):
    """``node`` and everything under it given ``src``'s location (where not already set)."""
    for n in ast.walk(node):
        if isinstance(n, (ast.stmt, ast.expr)) and not hasattr(n, "lineno"):
            ast.copy_location(n, src)
    return node


def _load(name):
    return ast.Name(id=name, ctx=ast.Load())


def _assign(name, value):
    value = value if isinstance(value, ast.expr) else ast.Constant(value=value)
    return ast.Assign(targets=[ast.Name(id=name, ctx=ast.Store())], value=value)


def _none_of(flags):
    """``not (f1 or f2 ...)``."""
    names = [_load(f) for f in flags]
    either = names[0] if len(names) == 1 else ast.BoolOp(op=ast.Or(), values=names)
    return ast.UnaryOp(op=ast.Not(), operand=either)


def _union(a, b):
    return a + [x for x in b if x not in a]


# ---------------------------------------------------------------------------------------------
# The pass
# ---------------------------------------------------------------------------------------------


class _Loop:
    def __init__(self, brk, cont):
        self.brk, self.cont = brk, cont


class _Pass:
    """One function's rewrite. ``block`` returns (statements, the flags they may set that
    matter after them, whether every path through them exits)."""

    def __init__(self, fn):
        used = _identifiers(fn)
        self.prefix, k = "_gj_", 0
        while any(u.startswith(self.prefix) for u in used):
            k += 1
            self.prefix = f"_gj{k}_"
        self.ret, self.retval = self.prefix + "ret", self.prefix + "retval"
        self.returns = _returns_early(fn)
        self.used_ret = False
        self.count = 0
        self.made = []  # names made for loops, in order (for LoopInfo.scratch)
        self.loops = []  # _Loop per enclosing loop, innermost last

    def name(self, kind):
        self.count += 1
        n = f"{self.prefix}{kind}{self.count}"
        self.made.append(n)
        return n

    def order(self, flags):
        """Flags in one order everywhere: return, then break, then continue."""
        rank = {self.ret: 0}
        for lp in self.loops:
            rank.update({lp.brk: 1, lp.cont: 2})
        return sorted(flags, key=lambda f: rank.get(f, 1))

    # -- blocks ----------------------------------------------------------------------------

    def block(self, stmts, tail):
        """``tail``: the end of this block is the end of the function (its returns only set
        the return value, and reaching its end returns None)."""
        out, sets, stmts = [], [], list(stmts)
        if tail and not stmts:
            return [self.fall_off(None)], [], True
        while stmts:
            s = stmts.pop(0)
            if isinstance(s, _LOOPS):
                orelse = s.orelse
                new, s_sets, brk = self.loop(s)
                done = False
                if orelse:
                    stmts[:0] = self.else_part(orelse, brk, s)
            else:
                new, s_sets, done = self.stmt(s, tail and not stmts)
            out += new
            sets = _union(sets, s_sets)
            if done:
                return out, sets, True
            if tail and not stmts and not isinstance(s, ast.If):
                stmts.append(_at(ast.Return(value=None), s))  # falls off the end
            if s_sets and stmts:
                rest, r_sets, r_done = self.block(stmts, tail)
                out.append(self.guard(s_sets, r_sets, rest, stmts[0]))
                return out, _union(sets, r_sets), r_done
        return out, sets, False

    def guard(self, flags, r_sets, rest, src):
        """``if not (flags): rest``. Inside, the flags are false: they are bound to False
        again where ``rest`` may set them, so that the interpreter knows it statically."""
        flags = self.order(flags)
        resets = [_at(_assign(f, False), src) for f in flags if f in r_sets]
        return _at(ast.If(test=_none_of(flags), body=resets + rest, orelse=[]), src)

    def fall_off(self, src):
        node = _assign(self.retval, None)
        return _at(node, src) if src is not None else node

    # -- statements ------------------------------------------------------------------------

    def stmt(self, s, tail):
        """(new statements, flags set, always exits) of one statement that is not a loop."""
        if isinstance(s, ast.Break):
            return [_at(_assign(self.loops[-1].brk, True), s)], [self.loops[-1].brk], True
        if isinstance(s, ast.Continue):
            return [_at(_assign(self.loops[-1].cont, True), s)], [self.loops[-1].cont], True
        if isinstance(s, ast.Return):
            return self.return_(s, tail)
        if isinstance(s, ast.If):
            body, b_sets, b_done = self.block(s.body, tail)
            orelse, e_sets, e_done = self.block(s.orelse, tail) if s.orelse or tail \
                else ([], [], False)
            s.body, s.orelse = body or [_at(ast.Pass(), s)], orelse
            return [s], _union(b_sets, e_sets), b_done and e_done
        if isinstance(s, (ast.Try, ast.With)):
            return self.try_with(s)
        return [s], [], False  # a def, an assignment, ...

    def try_with(self, s):
        """A try or with statement: its blocks rewritten where they are (never the tail: the
        finally clause or the manager's exit still runs after a return); a try's else clause
        runs only if its body did not exit."""
        body, sets, done = self.block(s.body, False)
        s.body = body or [_at(ast.Pass(), s)]
        if isinstance(s, ast.With):
            return [s], sets, done
        for h in s.handlers:
            h_body, h_sets, h_done = self.block(h.body, False)
            h.body = h_body or [_at(ast.Pass(), h)]
            sets, done = _union(sets, h_sets), done and h_done
        if s.orelse:
            orelse, e_sets, _ = self.block(s.orelse, False)
            s.orelse = [self.guard(sets, e_sets, orelse, s.orelse[0])] if sets else orelse
            sets = _union(sets, e_sets)
        if s.finalbody:
            final, f_sets, _ = self.block(s.finalbody, False)
            s.finalbody, sets = final or [_at(ast.Pass(), s)], _union(sets, f_sets)
        return [s], sets, done

    def return_(self, s, tail):
        if not self.returns:
            return [s], [], True
        value = s.value if s.value is not None else ast.Constant(value=None)
        if tail:
            return [_at(_assign(self.retval, value), s)], [], True
        self.used_ret = True
        return [_at(_assign(self.ret, True), s), _at(_assign(self.retval, value), s)], \
            [self.ret], True

    def else_part(self, orelse, brk, loop):
        """A loop's else clause, as statements that follow it."""
        if brk is None:
            return list(orelse)
        return [_at(ast.If(test=ast.UnaryOp(op=ast.Not(), operand=_load(brk)),
                           body=list(orelse), orelse=[]), loop)]

    # -- loops -----------------------------------------------------------------------------

    def loop(self, s):
        """(new statements, flags set, break flag) of a loop; its else clause is left to the
        caller (``else_part``)."""
        brk = self.name("brk") if _owns(s.body, ast.Break) else None
        cont = self.name("cont") if _owns(s.body, ast.Continue) else None
        mark = len(self.made)
        self.loops.append(_Loop(brk, cont))
        try:
            body, b_sets, _ = self.block(s.body, tail=False)
        finally:
            self.loops.pop()
        exits = [f for f in (brk, self.ret) if f in b_sets]
        if cont is not None:
            body.insert(0, _at(_assign(cont, False), s))
        info = dict(exits=tuple(exits), scratch=tuple(self.made[mark:]))
        if cont is not None:
            info["scratch"] += (cont,)
        if isinstance(s, ast.While):
            if exits:
                info["test"] = s.test
                s.test = _at(ast.BoolOp(op=ast.And(), values=[_none_of(self.order(exits)),
                                                              s.test]), s)
        elif exits:  # iterate over a temporary: the target is assigned only when it runs
            it = self.name("it")
            info.update(target=copy.deepcopy(s.target), scratch=info["scratch"] + (it,))
            head = [_at(_assign(f, False), s) for f in self.order(exits)]
            head.append(_at(ast.Assign(targets=[s.target], value=_load(it)), s))
            body = [_at(ast.If(test=_none_of(self.order(exits)), body=head + body, orelse=[]), s)]
            s.target = _at(ast.Name(id=it, ctx=ast.Store()), s)
        s.body, s.orelse = body, []
        s.gj_loop = LoopInfo(**info)
        pre = [_at(_assign(brk, False), s)] if brk is not None else []
        return pre + [s], [f for f in b_sets if f == self.ret], brk
