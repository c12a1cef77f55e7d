import math

import pytest
import torch

from diffprior.operators import Blur, Inpaint, gaussian_kernel, random_mask
from diffprior.prior import GaussianPrior
from diffprior.solvers import DivergenceError


@pytest.fixture(autouse=True)
def _deterministic():
    """A fixed seed, and one thread: the tests' tensors are small, and two threads contend on a busy machine."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def diverge(monkeypatch):
    """diverge(module, method, message): `module.solve` raises DivergenceError(message) for `method` and runs the
    others; returns the real solve."""
    def patch(module, method: str, message: str = "the iterate is not finite"):
        real = module.solve

        def solve(name, *args, **kwargs):
            if name == method:
                raise DivergenceError(message)
            return real(name, *args, **kwargs)

        monkeypatch.setattr(module, "solve", solve)
        return real
    return patch


def linear_gaussian_problem(shape: tuple[int, ...], op, sigma_y: float, seed: int) -> dict:
    """A Gaussian prior with a random full covariance on images of `shape`, one measurement y = A x + noise of
    a draw x, and the exact posterior p(x | y): the ground truth the solvers are checked against."""
    g = torch.Generator().manual_seed(seed)
    d = math.prod(shape)
    L = torch.randn(d, d, generator=g, dtype=torch.float64)
    cov = L @ L.T / d * 0.5 + 0.05 * torch.eye(d, dtype=torch.float64)
    mean = 0.3 * torch.randn(d, generator=g, dtype=torch.float64)
    prior = GaussianPrior(mean.reshape(shape), cov)
    x = prior.sample(1, torch.Generator().manual_seed(seed + 2))
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed + 3), dtype=torch.float64)
    y = op.A(x) + sigma_y * noise
    M = torch.stack([op.A(e.reshape(1, *shape)).flatten() for e in torch.eye(d, dtype=torch.float64)], 1)
    posterior = prior.posterior(M, y.flatten(), sigma_y)
    return dict(prior=prior, op=op, x=x, y=y, sigma_y=sigma_y, posterior=posterior)


@pytest.fixture
def gaussian_problem():
    """16 dimensions, (1, 4, 4) images, half the pixels observed with noise 0.1."""
    op = Inpaint(random_mask(0.5, 4, 4, generator=torch.Generator().manual_seed(1)))
    return linear_gaussian_problem((1, 4, 4), op, 0.1, seed=0)


@pytest.fixture
def gaussian_blur_problem():
    """64 dimensions, (1, 8, 8) images blurred (circular 3x3 Gaussian, std 1) with noise 0.05: a problem with
    a complex (Fourier) SVD and no exactly unobserved direction."""
    return linear_gaussian_problem((1, 8, 8), Blur(gaussian_kernel(3, 1.0), (8, 8)), 0.05, seed=10)
