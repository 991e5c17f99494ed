"""Gradient descent on Himmelblau's function f(x, y) = (x^2 + y - 11)^2 + (x + y^2 - 7)^2.

The TensorFlow/PyTorch tutorial's optimisation "without optimizer": x <- x - lr * grad f(x)
from (0, 0) with lr = 0.001 reaches the minimum (3, 2). Himmelblau has four minima, where
f = 0; started from the four corners of the square [-4, 4]^2, descent finds all four. The
whole descent can also be one compiled call: ``gj.jit`` of a function whose loop calls
``gj.grad``. Plots the contours and the five paths to ``figures/himmelblau.png``.

    python examples/himmelblau.py
"""

import numpy as np

import gradjit as gj
from _check import check, section
from _plot import pyplot, save

# the four minima (f = 0), to the six decimals they are usually quoted with
MINIMA = np.array([[3.0, 2.0], [-2.805118, 3.131312], [-3.779310, -3.283186],
                   [3.584428, -1.848126]])
STARTS = np.array([[4.0, 4.0], [-4.0, 4.0], [-4.0, -4.0], [4.0, -4.0]])


def himmelblau(x):
    return (x[0] ** 2 + x[1] - 11) ** 2 + (x[0] + x[1] ** 2 - 7) ** 2


def himmelblau_grad(x):          # by hand, for reference
    a, b = x[0] ** 2 + x[1] - 11, x[0] + x[1] ** 2 - 7
    return np.array([4 * x[0] * a + 2 * b, 2 * a + 4 * x[1] * b])


def pt(p):
    return "(" + ", ".join(f"{v:g}" for v in p) + ")"


def descend(grad, x, lr=0.001, steps=3000):
    path = [x]
    for _ in range(steps):
        x = x - lr * grad(x)
        path.append(x)
    return np.array(path)


@gj.jit
def descend_compiled(x, lr, steps):
    for _ in range(steps):
        x = x - lr * gj.grad(himmelblau)(x)
    return x


def plot(paths):
    plt = pyplot()
    if plt is None:
        return
    t = np.linspace(-6, 6, 300)
    X, Y = np.meshgrid(t, t)
    Z = himmelblau([X, Y])
    fig, ax = plt.subplots(figsize=(7, 6))
    cs = ax.contourf(X, Y, np.log10(Z + 1e-3), levels=30, cmap="viridis")
    ax.contour(X, Y, Z, levels=np.geomspace(0.5, 800, 14), colors="white", linewidths=0.4)
    fig.colorbar(cs, ax=ax, label="log10 f(x, y)")
    colors = ["tab:red", "tab:orange", "tab:pink", "tab:cyan", "white"]
    for path, color in zip(paths, colors):
        ax.plot(path[:, 0], path[:, 1], "-", color=color, lw=1.8)
        ax.plot(*path[0], "o", color=color, ms=6, mec="black")
    ax.plot(MINIMA[:, 0], MINIMA[:, 1], "*", color="yellow", ms=14, mec="black",
            label="minima (f = 0)")
    ax.set(xlabel="x", ylabel="y", title="Himmelblau: gradient descent with gj.grad, lr = 0.001",
           aspect="equal")
    ax.legend(loc="lower left")
    save(fig, "himmelblau.png")


def main():
    g = gj.grad(himmelblau)

    section("the gradient against the hand-written one")
    for p in [np.array([0.0, 0.0]), np.array([1.5, -2.0]), np.array([-3.0, 3.5])]:
        check(f"grad f{pt(p)}", g(p), himmelblau_grad(p))

    section("descent from (0, 0), lr = 0.001")
    path = descend(g, np.array([0.0, 0.0]))
    # the tutorial's first print: step 0: x = [0.014 0.022], pred = 170.0
    check("after step 0 (tutorial: x = [0.014 0.022], f = 170)", (path[1], himmelblau(path[0])),
          (np.array([0.014, 0.022]), 170.0))
    for step in [0, 100, 500, 2000]:
        print(f"  step {step:5d}: x = {path[step + 1]}, pred = {himmelblau(path[step]):.3e}")
    check("x after 3000 steps", path[-1], [3.0, 2.0], rtol=1e-6, atol=1e-6)

    section("four starts, four minima")
    paths = [descend(g, s) for s in STARTS]
    for s, p, m in zip(STARTS, paths, MINIMA):
        check(f"from {pt(s)}", p[-1], m, atol=1e-5)
        assert himmelblau(p[-1]) < 1e-10

    section("the whole descent as one gj.jit call (its loop calls gj.grad)")
    for s, p in zip(STARTS, paths):
        check(f"descend_compiled({pt(s)}, 0.001, 3000)", descend_compiled(s, 0.001, 3000),
              p[-1], rtol=1e-9, atol=1e-9)

    plot(paths + [path])


if __name__ == "__main__":
    main()
