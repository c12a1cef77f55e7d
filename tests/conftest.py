import pytest
import torch

from diffprior.operators import Inpaint, random_mask
from diffprior.prior import GaussianPrior


@pytest.fixture(autouse=True)
def _deterministic():
    """A fixed seed, and one thread: the tests' tensors are small, and two threads contend on a busy machine."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def gaussian_problem():
    """A 16-dimensional Gaussian prior on (1, 4, 4) images, half the pixels observed with noise 0.1, and
    the exact posterior of one measurement: the ground truth the solvers are checked against."""
    g = torch.Generator().manual_seed(0)
    shape, d = (1, 4, 4), 16
    L = torch.randn(d, d, generator=g, dtype=torch.float64)
    cov = L @ L.T / d * 0.5 + 0.05 * torch.eye(d, dtype=torch.float64)
    mean = 0.3 * torch.randn(d, generator=g, dtype=torch.float64)
    prior = GaussianPrior(mean.reshape(shape), cov)
    op = Inpaint(random_mask(0.5, 4, 4, generator=torch.Generator().manual_seed(1)))
    x = prior.sample(1, torch.Generator().manual_seed(2))
    sigma_y = 0.1
    y = op.A(x) + sigma_y * torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    M = torch.stack([op.A(e.reshape(1, *shape)).flatten() for e in torch.eye(d, dtype=torch.float64)], 1)
    posterior = prior.posterior(M, y.flatten(), sigma_y)
    return dict(prior=prior, op=op, x=x, y=y, sigma_y=sigma_y, posterior=posterior)


@pytest.fixture
def gaussian_blur_problem():
    """A 64-dimensional Gaussian prior on (1, 8, 8) images, blurred (circular 3x3 Gaussian, std 1) with
    noise 0.05, and the exact posterior of one measurement: a problem with a complex (Fourier) SVD and
    no exactly unobserved direction."""
    from diffprior.operators import Blur, gaussian_kernel

    g = torch.Generator().manual_seed(10)
    shape, d = (1, 8, 8), 64
    L = torch.randn(d, d, generator=g, dtype=torch.float64)
    cov = L @ L.T / d * 0.5 + 0.05 * torch.eye(d, dtype=torch.float64)
    mean = 0.3 * torch.randn(d, generator=g, dtype=torch.float64)
    prior = GaussianPrior(mean.reshape(shape), cov)
    op = Blur(gaussian_kernel(3, 1.0), (8, 8))
    x = prior.sample(1, torch.Generator().manual_seed(12))
    sigma_y = 0.05
    y = op.A(x) + sigma_y * torch.randn(x.shape, generator=torch.Generator().manual_seed(13), dtype=torch.float64)
    M = torch.stack([op.A(e.reshape(1, *shape)).flatten() for e in torch.eye(d, dtype=torch.float64)], 1)
    posterior = prior.posterior(M, y.flatten(), sigma_y)
    return dict(prior=prior, op=op, x=x, y=y, sigma_y=sigma_y, posterior=posterior)
