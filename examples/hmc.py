"""Hamiltonian Monte Carlo in the user's own @njit code, calling gradjit's fused gradient of the
log-density with no Python in the loop (``gj.grad(f).numba(example)``)."""

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


if __name__ == "__main__":
    s = run()
    print("mean", s.mean(0), "expected", MEAN)
    print("cov\n", np.cov(s.T), "\nexpected\n", np.linalg.inv(PREC))
