"""Simple gradients: the first cells of the PyTorch, TensorFlow and d2l tutorials.

Where those tutorials wrap x in a tensor that records operations (``requires_grad=True``,
``tf.GradientTape``) and call ``backward()``, gradjit takes the plain numpy function and
returns its gradient function: ``gj.grad(f)(x)``. Ends with the Q&A "why is the gradient 16
and not 8?", answered with the chain rule next to the IR gradjit generates.

    python examples/simple_gradients.py
"""

import numpy as np

import gradjit as gj
from _check import central_grad, check, print_ir, section


def func(x):
    return x**2 + x**3 + 5           # df/dx = 2x + 3x^2


def twice_dot(x):
    return 2 * np.dot(x, x)          # d/dx 2 x.x = 4x


def total(x):
    return np.sum(x)                 # d/dx sum(x) = ones


def squared_error(w, x, y):
    y_hat = w * x
    s = y_hat - y
    return s**2


def main():
    section("f(x) = x**2 + x**3 + 5 at x = 2")
    check("gj.grad(func)(2.0)", gj.grad(func)(2.0), 2 * 2.0 + 3 * 2.0**2)
    # the tutorials' x = tensor([2.]): a float32 array of one element, the output summed
    g32 = gj.grad(lambda x: np.sum(func(x)))(np.array([2.0], dtype=np.float32))
    check("float32 [2.] -> float32 gradient", g32, [16.0])
    assert g32.dtype == np.float32

    section("y = 2 x.x, x = arange(4): gradient 4x")
    x = np.arange(4.0)
    check("gj.grad(twice_dot)(x)", gj.grad(twice_dot)(x), 4 * x)
    check("  vs central differences", gj.grad(twice_dot)(x), central_grad(twice_dot, x), rtol=1e-6,
          atol=1e-6)

    section("y = sum(x): gradient ones")
    check("gj.grad(total)(x)", gj.grad(total)(x), np.ones(4))

    section("loss = (w*x - y)**2 at w=3, x=2, y=2: why 16 and not 8?")
    w, x, y = 3.0, 2.0, 2.0
    g = gj.grad(squared_error)   # d loss / d w (argument 0)
    s = w * x - y
    print(f"""  chain rule, loss(s) = s**2 with s = y_hat - y and y_hat = w * x:
    d loss / d s   = 2 s         = 2 * {s:g} = {2 * s:g}    <- where the hand derivation stopped
    d s / d y_hat  = 1
    d y_hat / d w  = x           = {x:g}
    d loss / d w   = 2 s * 1 * x = {2 * s:g} * {x:g} = {2 * s * x:g}""")
    lowered = g.lower(w, x, y)
    print("\n  the traced function (v0 = w, v1 = x, v2 = y):")
    print_ir(lowered.traced_ir)
    print("  its gradient as gradjit emits it: the `pow` became `mul 2.0` (d s**2 / d s), and the")
    print("  last `mul ... v1` is the factor x that the hand derivation forgot:")
    print_ir(lowered.optimized_ir)
    check("gj.grad(squared_error)(3, 2, 2)", g(w, x, y), 2 * (w * x - y) * x)
    check("  vs central differences", g(w, x, y), central_grad(lambda w: squared_error(w, x, y), w),
          rtol=1e-6)
    check("gradients of w, x, y at once (argnums=(0, 1, 2))",
          gj.grad(squared_error, argnums=(0, 1, 2))(w, x, y), (2 * s * x, 2 * s * w, -2 * s))


if __name__ == "__main__":
    main()
