"""Priors: a noise schedule plus a denoiser, behind one contract.

Every prior answers, for a noisy x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) z at integer timestep t:
  eps(x_t, t)    the predicted noise z
  x0(x_t, t)     the Tweedie / MMSE estimate E[x_0 | x_t] = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)
  score(x_t, t)  grad log p_t(x_t) = -eps / sqrt(1 - abar_t)
`t` is a Python int (the whole batch at one timestep, the solvers' case) or a LongTensor of shape (B,).

`NetworkPrior` wraps any network that predicts eps or v (turned into eps). The analytic priors (`GaussianPrior`,
`GaussianMixturePrior`) have a closed-form E[x_0 | x_t] and a closed-form posterior for linear
measurements: they are the ground truth the tests and the posterior benchmark measure solvers against.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .devices import native_bf16
from .schedule import Schedule, eps_from_v


PREDICTIONS = ("eps", "v")  # what a NetworkPrior's network may predict


def check_prior(prior) -> None:
    """Refuse (TypeError) anything that is not a Prior, saying how to make one."""
    if not isinstance(prior, Prior):
        raise TypeError(f"the prior must be a diffprior Prior, e.g. dp.load_prior('faces64'); got "
                        f"{type(prior).__name__}{' (load it with dp.load_prior)' if isinstance(prior, str) else ''}")


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

    @property
    def precision(self) -> str:
        """How the prior computes: "fp32", or "bf16" for a network under bfloat16 autocast."""
        return "fp32"

    def eps_from_x0(self, x_t: Tensor, t: int | Tensor, x0: Tensor) -> Tensor:
        a = self.schedule.abar_like(t, x_t)
        return (x_t - a ** 0.5 * x0) / (1 - a) ** 0.5


@dataclass(frozen=True)
class Speed:
    """How a NetworkPrior runs its network (see `NetworkPrior.configure`); the defaults are plain float32."""
    dtype: str = "fp32"              # "fp32" or "bf16" (autocast, where the device has native bf16)
    channels_last: bool = False      # NHWC memory format for the network's weights and inputs
    compile: str | None = None       # a torch.compile mode, or None for eager execution


def check_compile_mode(mode: str) -> None:
    """Refuse a torch.compile mode that torch does not know (it would fail at the first network call)."""
    from torch._inductor import list_mode_options
    if mode not in list_mode_options():
        raise ValueError(f"unknown torch.compile mode {mode!r}; choose from {', '.join(list_mode_options())}")


class NetworkPrior(Prior):
    """A trained network that predicts the noise eps, or, with prediction="v", the velocity
    v = sqrt(abar) eps - sqrt(1 - abar) x_0 (Salimans & Ho 2022), turned into eps here (`eps_from_v`);
    `v_shift` s < 1 reads v at the signal-to-noise ratio SNR / s (`eps_from_v` says how).
    With `learned_variance`, the network returns 2C channels: eps, then guided-diffusion's variance
    interpolation (Nichol & Dhariwal 2021), used by the DDPM step."""

    def __init__(self, net: nn.Module, schedule: Schedule, shape: tuple[int, ...], *,
                 learned_variance: bool = False, prediction: str = "eps", v_shift: float = 1.0,
                 config: dict | None = None):
        super().__init__(schedule, shape, bounded=True)
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {prediction!r}; expected 'eps' or 'v'")
        if not v_shift > 0:
            raise ValueError(f"v_shift must be positive, not {v_shift!r}")
        self.net = net
        self._learned_variance = learned_variance
        self.prediction, self.v_shift = prediction, float(v_shift)
        self.config = config or {}  # what the checkpoint says of itself (architecture, training, ...)
        self.speed = Speed()  # plain float32, eager: see `configure`
        self._compiled = None  # torch.compile'd `_forward`, when speed.compile is set

    @property
    def learned_variance(self) -> bool:
        return self._learned_variance

    @property
    def precision(self) -> str:
        return self.speed.dtype

    def configure(self, *,
                  dtype: str = "fp32",            # "fp32", or "bf16": bfloat16 autocast of the network
                  channels_last: bool = False,    # NHWC weights and inputs (faster convolutions on some GPUs)
                  compile: str | None = None,     # None: eager; a torch.compile mode: "default", "max-autotune", ...
                  ) -> "NetworkPrior":
        """Set how the network runs; everything else (the schedule arithmetic, x0 and the solvers' updates,
        the likelihood gradients) stays in the input's dtype, and eps comes back in it too. Each call sets
        all three settings, so `configure()` restores plain float32 eager execution. Returns self.

        bf16 autocast needs a device that computes in bf16 natively (`devices.native_bf16`: CUDA, or a CPU
        with AVX-512 BF16 / AMX); elsewhere it is emulated, slower than float32, and refused. compile freezes
        the network's parameters (requires_grad False): solvers differentiate with respect to x_t only, and a
        compiled backward would compute weight gradients too.
        One graph is compiled per batch size and grad mode (dynamic=False); the first call of each is slow.
        """
        if dtype not in ("fp32", "bf16"):
            raise ValueError(f"unknown dtype {dtype!r}; expected 'fp32' or 'bf16'")
        if dtype == "bf16" and not native_bf16(self.device):
            raise ValueError(f"bf16 autocast needs a device with native bfloat16 ({self.device} has none: it would "
                             "be emulated, slower than fp32); use fp32 here")
        if compile is not None:
            check_compile_mode(compile)
        self.net.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        self.speed = Speed(dtype, channels_last, compile)
        self._compiled = None
        self.net.requires_grad_(compile is None)  # eager: trainable, as loaded; compiled: frozen (above)
        if compile is not None:
            self._compiled = torch.compile(self._forward, mode=compile, dynamic=False)
        return self

    def _forward(self, x: Tensor, t: Tensor) -> Tensor:
        """The network's output under the speed settings, in x's dtype and device (the network computes in
        its weights' dtype: float64 images go in as float32)."""
        dtype, weight = x.dtype, next(self.net.parameters(), None)
        x = x if weight is None else x.to(weight.dtype)
        if self.speed.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.speed.dtype == "fp32":
            return self.net(x, t).to(dtype)
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            out = self.net(x, t)
        return out.to(dtype)

    def predict(self, x_t, t):
        # abar from the t as given: an int t (the solvers' case) gives a float, without a device round trip
        abar = self.schedule.abar_like(t, x_t) if self.prediction == "v" else None
        if isinstance(t, int):
            t = torch.full((x_t.shape[0],), t, device=x_t.device, dtype=torch.long)
        else:
            t = torch.as_tensor(t, device=x_t.device).reshape(-1).long().expand(x_t.shape[0])
        out = (self._compiled or self._forward)(x_t, t)
        eps, v = out.chunk(2, dim=1) if self._learned_variance else (out, None)
        if self.prediction == "v":
            eps = eps_from_v(x_t, eps, abar, self.v_shift)
        return eps, v


class GaussianMixturePrior(Prior):
    """p(x_0) = sum_k w_k N(mu_k, Sigma_k) on samples of shape `shape` (flattened to d = prod(shape)).

    Covariances are (K, d) diagonals, (K, d, d) full matrices (positive semi-definite), or, through
    `low_rank`, factors plus an isotropic floor, Sigma_k = F_k F_k^T + f_k I, for images too large for
    d x d matrices. Each is kept as an eigendecomposition, Sigma_k = U diag(lam) U^T + f_k (I - U U^T),
    so E[x_0 | x_t] is exact at every t:
      p(x_t | k) = N(sqrt(a) mu_k, a Sigma_k + (1 - a) I),
      E[x_0 | x_t, k] = mu_k + sqrt(a) Sigma_k (a Sigma_k + (1 - a) I)^-1 (x_t - sqrt(a) mu_k),
      E[x_0 | x_t] = sum_k p(k | x_t) E[x_0 | x_t, k].
    Computations run in float64; results come back in the input's dtype.
    """

    def __init__(self, weights: Tensor, means: Tensor, covs: Tensor | None = None, *,
                 shape: tuple[int, ...] | None = None, schedule: Schedule | None = None,
                 _eig: tuple[Tensor, Tensor, Tensor] | None = None):
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
        if _eig is not None:  # (U, lam, floor) from `low_rank`
            U, lam, floor = _eig
        else:
            covs = torch.as_tensor(covs, dtype=torch.float64)
            floor = torch.zeros(K, dtype=torch.float64)
            if covs.shape == (K, d):
                lam, U = covs, None
            elif covs.shape == (K, d, d):
                lam, U = torch.linalg.eigh((covs + covs.transpose(1, 2)) / 2)
            else:
                raise ValueError(f"covariances must have shape ({K}, {d}) or ({K}, {d}, {d}), got {tuple(covs.shape)}")
        if (lam < -1e-9 * lam.abs().max().clamp_min(1)).any() or (floor < 0).any():
            raise ValueError("covariances must be positive semi-definite")
        super().__init__(schedule or Schedule.linear(), shape, bounded=False)
        self.register_buffer("weights", weights / weights.sum())
        self.register_buffer("means", means)
        self.register_buffer("eigvals", lam.clamp_min(0))  # (K, r): variances along the eigenvectors
        self.register_buffer("eigvecs", U if U is not None else torch.empty(0, dtype=torch.float64))  # (K, d, r)
        self.register_buffer("floor", floor)  # (K,): the variance off the eigenvectors' span

    @classmethod
    def low_rank(cls, weights: Tensor, means: Tensor, factors: Tensor, floor: float | Tensor, *,
                 shape: tuple[int, ...] | None = None, schedule: Schedule | None = None) -> "GaussianMixturePrior":
        """Covariances F_k F_k^T + floor_k I from factors F of shape (K, d, r), with r << d."""
        factors = torch.as_tensor(factors, dtype=torch.float64)
        K = factors.shape[0]
        floor = torch.as_tensor(floor, dtype=torch.float64).expand(K).clone()
        U, S, _ = torch.linalg.svd(factors, full_matrices=False)  # (K, d, r), (K, r)
        return cls(weights, means, shape=shape, schedule=schedule, _eig=(U, S ** 2 + floor[:, None], floor))

    # -- the mixture's own quantities ---------------------------------------------------------------
    @property
    def full(self) -> bool:
        return self.eigvecs.numel() > 0

    def covariances(self) -> Tensor:
        """(K, d, d) covariance matrices."""
        if not self.full:
            return torch.diag_embed(self.eigvals)
        U = self.eigvecs
        eye = torch.eye(U.shape[1], dtype=U.dtype, device=U.device)
        return U @ torch.diag_embed(self.eigvals - self.floor[:, None]) @ U.transpose(1, 2) + self.floor[:, None, None] * eye

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
        if not self.full:
            return (self.means[k] + z * self.eigvals[k].sqrt()).reshape(n, *self.shape)
        U = self.eigvecs[k]  # (n, d, r)
        c = (U.transpose(1, 2) @ z[:, :, None])[:, :, 0]  # z's coordinates along the eigenvectors
        off = z - (U @ c[:, :, None])[:, :, 0]  # and its part off their span
        x = (U @ (c * self.eigvals[k].sqrt())[:, :, None])[:, :, 0] + self.floor[k, None].sqrt() * off
        return (self.means[k] + x).reshape(n, *self.shape)

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
        a = a.reshape(-1, 1, 1).double() if isinstance(a, Tensor) else a  # (B, 1, 1) against (B, K, r)
        x = x_t.reshape(x_t.shape[0], 1, -1).double()  # (B, 1, d)
        r = x - a ** 0.5 * self.means  # (B, K, d) residual against each component's mean
        var = a * self.eigvals + (1 - a)  # the eigenvalues of a Sigma_k + (1 - a) I along the eigenvectors
        gain = a ** 0.5 * self.eigvals / var
        if not self.full:
            shift, logp = gain * r, -0.5 * ((r ** 2) / var + var.log()).sum(-1)
        else:
            c = torch.einsum("kdr,bkd->bkr", self.eigvecs, r)  # coordinates in each eigenbasis
            off = r - torch.einsum("kdr,bkr->bkd", self.eigvecs, c)  # the part off the eigenvectors' span
            a_k = a.reshape(-1, 1) if isinstance(a, Tensor) else a  # against floor's (K,)
            var_off = (a_k * self.floor + (1 - a_k))[..., None]  # (K, 1) or (B, K, 1)
            shift = torch.einsum("kdr,bkr->bkd", self.eigvecs, gain * c) + a ** 0.5 * self.floor[:, None] / var_off * off
            dims_off = self.means.shape[1] - self.eigvecs.shape[2]
            logp = -0.5 * ((c ** 2) / var + var.log()).sum(-1) \
                - 0.5 * ((off ** 2).sum(-1, keepdim=True) / var_off + dims_off * var_off.log())[..., 0]
        resp = torch.softmax(self.weights.log() + logp, dim=1)  # p(k | x_t), (B, K)
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
