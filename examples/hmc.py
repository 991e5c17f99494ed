"""Hamiltonian Monte Carlo in your own @njit code, calling gradjit's gradient of the
log-density with no Python in the loop.

``gj.grad(log_density).numba(*example_args)`` returns the compiled gradient as a numba
dispatcher; the leapfrog integrator and the Metropolis sampler below are plain ``@numba.njit``
functions that call it. The target is a correlated 2-D Gaussian, so the samples' mean and
covariance are checked against the exact ones; the gradient kernel is checked against the
closed form -P (x - mean). Plots the samples to ``figures/hmc.png``.

    python examples/hmc.py
"""

import numba
import numpy as np

import gradjit as gj

PREC = np.array([[2.0, -0.8], [-0.8, 1.0]])  # precision matrix of the target Gaussian
MEAN = np.array([1.0, -2.0])


def log_density(x, prec, mean):
    d = x - mean
    return -0.5 * d @ prec @ d


def gradient_kernel():
    """gradjit's gradient of the log-density, as a kernel numba code can call."""
    return gj.grad(log_density).numba(np.zeros(2), PREC, MEAN)


@numba.njit
def energy(x, p, prec, mean):
    d = x - mean
    return 0.5 * d @ prec @ d + 0.5 * p @ p


def make_leapfrog(grad_kernel):
    @numba.njit
    def leapfrog(x, p, prec, mean, eps, steps):
        """``steps`` leapfrog steps from (x, p): the Hamiltonian dynamics the sampler follows."""
        xn, pn = x.copy(), p.copy()
        pn = pn + 0.5 * eps * grad_kernel(xn, prec, mean)
        for _ in range(steps):
            xn = xn + eps * pn
            pn = pn + eps * grad_kernel(xn, prec, mean)
        pn = pn - 0.5 * eps * grad_kernel(xn, prec, mean)
        return xn, pn
    return leapfrog


def make_sampler(grad_kernel):
    leapfrog = make_leapfrog(grad_kernel)

    @numba.njit
    def sample(x0, prec, mean, n, eps, steps, seed):
        np.random.seed(seed)
        out = np.empty((n, x0.size))
        x = x0.copy()
        for k in range(n):
            p = np.random.standard_normal(x.size)
            xn, pn = leapfrog(x, p, prec, mean, eps, 1 + np.random.randint(steps))  # jittered
            if np.random.random() < np.exp(energy(x, p, prec, mean) - energy(xn, pn, prec, mean)):
                x = xn
            out[k] = x
        return out
    return sample


def run(n=20000, seed=0):
    samples = make_sampler(gradient_kernel())(np.zeros(2), PREC, MEAN, n, 0.1, 10, seed)
    return samples[n // 10:]


def plot(samples):
    from _plot import pyplot, save
    plt = pyplot()
    if plt is None:
        return
    cov = np.linalg.inv(PREC)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4.2))
    a1.plot(samples[::5, 0], samples[::5, 1], ".", ms=2, alpha=0.4, label="HMC samples (every 5th)")
    t = np.linspace(-3.5, 3.5, 200)
    GX, GY = np.meshgrid(t + MEAN[0], 1.6 * t + MEAN[1])
    D = np.stack([GX - MEAN[0], GY - MEAN[1]], axis=-1)
    a1.contour(GX, GY, np.einsum("...i,ij,...j->...", D, PREC, D), levels=[1, 4, 9],
               colors="black", linewidths=0.8)
    a1.plot(*samples[:40].T, "-", color="tab:red", lw=0.8, label="first 40 steps")
    a1.set(xlabel="x1", ylabel="x2", title="samples; exact 1, 2, 3 sigma contours")
    a1.legend(fontsize=8, loc="upper left")
    for k, color in enumerate(["tab:blue", "tab:orange"]):
        a2.hist(samples[:, k], bins=60, density=True, alpha=0.5, color=color, label=f"x{k + 1}")
        u = np.linspace(samples[:, k].min(), samples[:, k].max(), 200)
        a2.plot(u, np.exp(-0.5 * (u - MEAN[k]) ** 2 / cov[k, k]) / np.sqrt(2 * np.pi * cov[k, k]),
                color=color)
    a2.set(xlabel="x", title="marginals: histograms and exact densities")
    a2.legend(fontsize=8)
    save(fig, "hmc.png")


def main():
    from _check import check, section
    section("the gradient kernel numba code calls, against the closed form -P (x - mean)")
    g = gradient_kernel()
    for x in [np.zeros(2), np.array([1.5, -0.5])]:
        check(f"dlogp({x[0]:g}, {x[1]:g})", g(x, PREC, MEAN), -PREC @ (x - MEAN))

    section("20 000 HMC steps in @njit code (the first 2 000 discarded)")
    s = run()
    check("mean of the samples", s.mean(0), MEAN, atol=0.05)
    check("covariance of the samples", np.cov(s.T), np.linalg.inv(PREC), atol=0.08)
    plot(s)


if __name__ == "__main__":
    main()
