"""Priors: a noise schedule plus a denoiser, behind one contract.

Every prior answers, for a noisy x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) z at integer timestep t:
  eps(x_t, t)    the predicted noise z
  x0(x_t, t)     the Tweedie / MMSE estimate E[x_0 | x_t] = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)
  score(x_t, t)  grad log p_t(x_t) = -eps / sqrt(1 - abar_t)
`t` is a Python int (the whole batch at one timestep, the solvers' case) or a LongTensor of shape (B,).

`NetworkPrior` wraps any epsilon-predicting network. The analytic priors (`GaussianPrior`,
`GaussianMixturePrior`) have a closed-form E[x_0 | x_t] and a closed-form posterior for linear
measurements: they are the ground truth the tests and the posterior benchmark measure solvers against.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .schedule import Schedule


class Prior(nn.Module):
    """Base class. Subclasses implement `predict`; the analytic ones also override `x0`."""

    def __init__(self, schedule: Schedule, shape: tuple[int, ...], bounded: bool):
        super().__init__()
        self.schedule = schedule
        self.shape = tuple(int(s) for s in shape)  # one sample, e.g. (3, 64, 64)
        self.bounded = bounded  # data lie in [-1, 1]: samplers clip x0 estimates to that range

    @property
    def device(self) -> torch.device:
        return next(iter(self.buffers()), next(iter(self.parameters()), torch.empty(0))).device

    @property
    def learned_variance(self) -> bool:
        """Whether `predict` returns guided-diffusion's variance interpolation."""
        return False

    def predict(self, x_t: Tensor, t: int | Tensor) -> tuple[Tensor, Tensor | None]:
        """(eps, v): the noise estimate, and the learned variance interpolation v in [-1, 1] or None."""
        raise NotImplementedError

    def eps(self, x_t: Tensor, t: int | Tensor) -> Tensor:
        return self.predict(x_t, t)[0]

    def x0(self, x_t: Tensor, t: int | Tensor) -> Tensor:
        return self.x0_from_eps(x_t, t, self.eps(x_t, t))

    def score(self, x_t: Tensor, t: int | Tensor) -> Tensor:
        return -self.eps(x_t, t) / (1 - self.schedule.abar_like(t, x_t)) ** 0.5

    def x0_from_eps(self, x_t: Tensor, t: int | Tensor, eps: Tensor) -> Tensor:
        a = self.schedule.abar_like(t, x_t)
        return (x_t - (1 - a) ** 0.5 * eps) / a ** 0.5

    def eps_from_x0(self, x_t: Tensor, t: int | Tensor, x0: Tensor) -> Tensor:
        a = self.schedule.abar_like(t, x_t)
        return (x_t - a ** 0.5 * x0) / (1 - a) ** 0.5


class NetworkPrior(Prior):
    """A trained epsilon-predicting network. With `learned_variance`, the network returns 2C channels:
    eps, then guided-diffusion's variance interpolation v (Nichol & Dhariwal 2021), used by the DDPM step."""

    def __init__(self, net: nn.Module, schedule: Schedule, shape: tuple[int, ...], *,
                 learned_variance: bool = False, config: dict | None = None):
        super().__init__(schedule, shape, bounded=True)
        self.net = net
        self._learned_variance = learned_variance
        self.config = config or {}  # what the checkpoint says of itself (architecture, training, ...)

    @property
    def learned_variance(self) -> bool:
        return self._learned_variance

    def predict(self, x_t, t):
        if isinstance(t, int):
            t = torch.full((x_t.shape[0],), t, device=x_t.device, dtype=torch.long)
        else:
            t = torch.as_tensor(t, device=x_t.device).reshape(-1).long().expand(x_t.shape[0])
        out = self.net(x_t, t)
        if self._learned_variance:
            eps, v = out.chunk(2, dim=1)
            return eps, v
        return out, None


class GaussianMixturePrior(Prior):
    """p(x_0) = sum_k w_k N(mu_k, Sigma_k) on samples of shape `shape` (flattened to d = prod(shape)).

    Covariances are (K, d) diagonals or (K, d, d) full matrices (positive semi-definite). Each is kept
    as its eigendecomposition, so E[x_0 | x_t] is exact at every t:
      p(x_t | k) = N(sqrt(a) mu_k, a Sigma_k + (1 - a) I),
      E[x_0 | x_t, k] = mu_k + sqrt(a) Sigma_k (a Sigma_k + (1 - a) I)^-1 (x_t - sqrt(a) mu_k),
      E[x_0 | x_t] = sum_k p(k | x_t) E[x_0 | x_t, k].
    Computations run in float64; results come back in the input's dtype.
    """

    def __init__(self, weights: Tensor, means: Tensor, covs: Tensor, *,
                 shape: tuple[int, ...] | None = None, schedule: Schedule | None = None):
        means = torch.as_tensor(means, dtype=torch.float64)
        K = means.shape[0]
        means = means.reshape(K, -1)
        d = means.shape[1]
        shape = (d,) if shape is None else tuple(shape)
        if math.prod(shape) != d:
            raise ValueError(f"shape {shape} does not hold {d} values")
        weights = torch.as_tensor(weights, dtype=torch.float64).reshape(K)
        if (weights < 0).any() or float(weights.sum()) <= 0:
            raise ValueError("mixture weights must be non-negative with a positive sum")
        covs = torch.as_tensor(covs, dtype=torch.float64)
        if covs.shape == (K, d):
            lam, U = covs, None
        elif covs.shape == (K, d, d):
            lam, U = torch.linalg.eigh((covs + covs.transpose(1, 2)) / 2)
        else:
            raise ValueError(f"covariances must have shape ({K}, {d}) or ({K}, {d}, {d}), got {tuple(covs.shape)}")
        if (lam < -1e-9 * lam.abs().max().clamp_min(1)).any():
            raise ValueError("covariances must be positive semi-definite")
        super().__init__(schedule or Schedule.linear(), shape, bounded=False)
        self.register_buffer("weights", weights / weights.sum())
        self.register_buffer("means", means)
        self.register_buffer("eigvals", lam.clamp_min(0))  # (K, d)
        self.register_buffer("eigvecs", U if U is not None else torch.empty(0, dtype=torch.float64))

    # -- the mixture's own quantities ---------------------------------------------------------------
    @property
    def full(self) -> bool:
        return self.eigvecs.numel() > 0

    def covariances(self) -> Tensor:
        """(K, d, d) covariance matrices."""
        if self.full:
            return self.eigvecs @ torch.diag_embed(self.eigvals) @ self.eigvecs.transpose(1, 2)
        return torch.diag_embed(self.eigvals)

    def mean(self) -> Tensor:
        return (self.weights[:, None] * self.means).sum(0).reshape(self.shape)

    def covariance(self) -> Tensor:
        """(d, d) covariance of the whole mixture."""
        m = self.weights @ self.means
        dev = self.means - m
        return (self.weights[:, None, None] * (self.covariances() + dev[:, :, None] * dev[:, None, :])).sum(0)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n exact draws x_0 ~ p, shape (n, *shape), float64, on the prior's device."""
        k = torch.multinomial(self.weights.cpu(), n, replacement=True, generator=generator).to(self.means.device)
        z = torch.randn(n, self.means.shape[1], generator=generator, dtype=torch.float64).to(self.means.device)
        z = z * self.eigvals[k].sqrt()
        if self.full:
            z = (self.eigvecs[k] @ z[:, :, None])[:, :, 0]
        return (self.means[k] + z).reshape(n, *self.shape)

    def posterior(self, M: Tensor, y: Tensor, sigma_y: float) -> "GaussianMixturePrior":
        """The exact posterior p(x_0 | y) for y = M x_0 + sigma_y n, with M a (m, d) matrix and y of shape (m,).

        Per component: gain G = Sigma M^T (M Sigma M^T + s^2 I)^-1, mean mu + G (y - M mu),
        covariance Sigma - G M Sigma, weight w_k N(y; M mu_k, M Sigma_k M^T + s^2 I).
        """
        M = torch.as_tensor(M, dtype=torch.float64, device=self.means.device)
        y = torch.as_tensor(y, dtype=torch.float64, device=self.means.device).reshape(-1)
        S = self.covariances()
        SMt = S @ M.T  # (K, d, m)
        C = M @ SMt + sigma_y ** 2 * torch.eye(M.shape[0], dtype=torch.float64, device=M.device)
        r = y - self.means @ M.T  # (K, m)
        G = torch.linalg.solve(C, SMt.transpose(1, 2)).transpose(1, 2)  # (K, d, m)
        means = self.means + (G @ r[:, :, None])[:, :, 0]
        covs = S - G @ M @ S
        L = torch.linalg.cholesky(C)
        white = torch.linalg.solve_triangular(L, r[:, :, None], upper=False)[:, :, 0]
        logw = self.weights.log() - 0.5 * (white ** 2).sum(1) - torch.log(torch.diagonal(L, dim1=1, dim2=2)).sum(1)
        return GaussianMixturePrior(torch.softmax(logw, 0), means, (covs + covs.transpose(1, 2)) / 2,
                                    shape=self.shape, schedule=self.schedule)

    # -- the Prior contract ---------------------------------------------------------------------------
    def x0(self, x_t, t):
        a = self.schedule.abar_like(t, x_t)
        a = a.reshape(-1, 1, 1).double() if isinstance(a, Tensor) else a  # (B, 1, 1) against (B, K, d)
        x = x_t.reshape(x_t.shape[0], 1, -1).double()  # (B, 1, d)
        r = x - a ** 0.5 * self.means  # (B, K, d) residual against each component's mean
        var = a * self.eigvals + (1 - a)  # (B or 1, K, d): the eigenvalues of a Sigma_k + (1 - a) I
        if self.full:
            r = torch.einsum("kde,bkd->bke", self.eigvecs, r)  # into each component's eigenbasis
        gain = a ** 0.5 * self.eigvals / var
        shift = gain * r
        if self.full:
            shift = torch.einsum("kde,bke->bkd", self.eigvecs, shift)
        logp = self.weights.log() - 0.5 * ((r ** 2) / var + var.log()).sum(-1)  # (B, K), up to a constant
        resp = torch.softmax(logp, dim=1)
        x0 = ((self.means + shift) * resp[:, :, None]).sum(1)
        return x0.reshape(x_t.shape).to(x_t.dtype)

    def predict(self, x_t, t):
        return self.eps_from_x0(x_t, t, self.x0(x_t, t)), None


class GaussianPrior(GaussianMixturePrior):
    """p(x_0) = N(mean, cov), cov a diagonal (d,) or a full (d, d) matrix: a one-component mixture."""

    def __init__(self, mean: Tensor, cov: Tensor, *, shape: tuple[int, ...] | None = None,
                 schedule: Schedule | None = None):
        mean = torch.as_tensor(mean, dtype=torch.float64)
        shape = tuple(mean.shape) if shape is None else shape
        super().__init__(torch.ones(1), mean.reshape(1, -1), torch.as_tensor(cov)[None], shape=shape, schedule=schedule)
