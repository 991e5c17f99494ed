"""A Graphviz drawing of a graph (like torchviz's ``make_dot``): one node per value and
equation, edges along data flow, inputs and outputs highlighted."""

from __future__ import annotations

from .ir import Lit, Namer, Var, fmt_aval


def to_dot(graph, title="gradjit"):
    name = Namer()
    lines = [f'digraph "{title}" {{', "  rankdir=TB;", '  node [fontname="monospace", fontsize=10];']
    for k, v in enumerate(graph.inputs):
        lines.append(f'  {name(v)} [label="{name(v)}: {fmt_aval(v.aval, name)}\\ninput {k}", '
                     'shape=box, style=filled, fillcolor="#cfe8ff"];')
    for j, e in enumerate(graph.eqns):
        op = f"e{j}"
        label = e.prim.name + (f"\\n{e.loc.rsplit('/', 1)[-1]}" if e.loc else "")
        lines.append(f'  {op} [label="{label}", shape=ellipse];')
        for a in e.inputs:
            src = name(a) if isinstance(a, Var) else None
            if src is None:
                lit = f"lit{j}_{id(a) % 100000}"
                lines.append(f'  {lit} [label="{name(a)}", shape=plaintext];')
                src = lit
            lines.append(f"  {src} -> {op};")
        for v in e.outputs:
            lines.append(f'  {name(v)} [label="{name(v)}: {fmt_aval(v.aval, name)}", shape=box];')
            lines.append(f"  {op} -> {name(v)};")
    for k, a in enumerate(graph.outputs):
        lines.append(f'  out{k} [label="output {k}", shape=box, style=filled, fillcolor="#d6f5d6"];')
        if isinstance(a, Lit):
            lines.append(f'  lit_out{k} [label="{name(a)}", shape=plaintext];')
            lines.append(f"  lit_out{k} -> out{k};")
        else:
            lines.append(f"  {name(a)} -> out{k};")
    lines.append("}")
    return "\n".join(lines) + "\n"
