"""Posterior uncertainty: K posterior samples of one measurement (SAMPLE_BATCH per solver call), their per-pixel
mean and standard deviation, and how well that standard deviation predicts the actual error (calibration)."""

from __future__ import annotations

import numbers
from pathlib import Path

import torch
from torch import Tensor

from .solvers import solve, spec_of

SAMPLE_BATCH = 16  # posterior samples per solver call
MAX_SAMPLES = 1024  # the most that the command line draws for one measurement


def why_no_spread(method: str) -> str | None:
    """Why K samples of `method` would have no spread (it draws nothing at random), or None."""
    return None if spec_of(method).random else ("draws nothing at random: its K samples would be K copies of one "
                                                "point estimate, with no spread to show")


def check_samples(method: str, k: int) -> None:
    """Refuse K posterior samples that could not have a spread: K < 2, or a method that draws nothing."""
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise ValueError(f"k={k!r}: the number of samples, a whole number >= 2")
    if k < 2:
        raise ValueError("at least 2 samples are needed for a standard deviation")
    if why := why_no_spread(method):
        raise ValueError(f"{method} {why}")


def posterior_samples(method: str, prior, op, y: Tensor, k: int, *, batch: int = SAMPLE_BATCH,
                      **settings) -> Tensor:
    """K samples (K, C, H, W) of p(x | y) for one measurement y (1, ...), drawn in solver calls of at most
    `batch` samples (one call when K <= batch), one generator throughout: a solver's memory grows with its
    batch, so many samples take longer, never more memory than `batch` of them. An `init` is one image
    (1, C, H, W), the start of every sample."""
    if not isinstance(y, Tensor) or y.dim() < 2 or y.shape[0] != 1:
        raise ValueError(f"expected one measurement, a batch of 1 (1, ...), got shape "
                         f"{tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__}")
    check_samples(method, k)
    if isinstance(batch, bool) or not isinstance(batch, numbers.Integral) or batch < 1:
        raise ValueError(f"batch={batch!r}: samples per solver call, a whole number >= 1")
    init = settings.pop("init", None)
    if init is not None and (not isinstance(init, Tensor) or init.dim() < 1 or init.shape[0] != 1):
        raise ValueError(f"init must be one image (1, C, H, W) for the one measurement, got "
                         f"{tuple(init.shape) if isinstance(init, Tensor) else type(init).__name__}")

    def draw(n: int) -> Tensor:
        start = {} if init is None else {"init": init.expand(n, *init.shape[1:])}
        return solve(method, prior, op, y.expand(n, *y.shape[1:]).contiguous(), **settings, **start)
    return torch.cat([draw(min(int(batch), k - start)) for start in range(0, int(k), int(batch))])


def calibration(mean: Tensor, std: Tensor, truth: Tensor, bins: int = 10) -> dict:
    """How the per-pixel posterior std compares with the actual error |mean - truth|.

    Pixels (all channels) are grouped into `bins` quantile bins of predicted std; per bin, the root mean
    square error against the root mean square predicted std (equal for a calibrated sampler). Also the
    coverage of the central 90% Gaussian interval mean +- 1.645 std (0.90 when calibrated)."""
    if isinstance(bins, bool) or not isinstance(bins, numbers.Integral) or not 1 <= bins <= 10_000:
        raise ValueError(f"bins={bins!r}: a whole number in [1, 10000]")
    if not mean.shape == std.shape == truth.shape:
        raise ValueError(f"calibration takes mean, std and truth of one shape, got {tuple(mean.shape)}, "
                         f"{tuple(std.shape)} and {tuple(truth.shape)}")
    s, e = std.flatten().double(), (mean - truth).abs().flatten().double()
    order = torch.argsort(s)
    groups = [g for g in torch.tensor_split(order, bins) if g.numel()]
    return {
        "std_rms": [float(s[g].square().mean().sqrt()) for g in groups],
        "error_rms": [float(e[g].square().mean().sqrt()) for g in groups],
        "coverage90": float((e <= 1.645 * s).double().mean()),
    }


def calibration_figure(cal: dict, path: str | Path, title: str = "") -> Path:
    """Plot RMS error against RMS predicted std per bin, with the diagonal of perfect calibration."""
    from .figures import plt, save_figure
    fig, ax = plt.subplots(figsize=(4, 3.6))
    top = max(max(cal["std_rms"]), max(cal["error_rms"])) * 1.1 or 1.0
    ax.plot([0, top], [0, top], "k--", lw=1, label="calibrated")
    ax.plot(cal["std_rms"], cal["error_rms"], "o-", label=f"samples (90% coverage {cal['coverage90']:.2f})")
    ax.set_xlabel("predicted std (per pixel, binned)")
    ax.set_ylabel("RMS error of the posterior mean")
    ax.set_xlim(0, top), ax.set_ylim(0, top)
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def std_image(std: Tensor) -> Tensor:
    """A (3, H, W) image in [-1, 1] of the per-pixel std averaged over channels, scaled to its maximum."""
    if std.dim() != 3:
        raise ValueError(f"std_image takes one image's std map (C, H, W), got shape {tuple(std.shape)}")
    m = std.mean(0, keepdim=True)
    m = m / m.max().clamp_min(1e-12)
    return (2 * m - 1).expand(3, -1, -1)


__all__ = ["posterior_samples", "calibration", "calibration_figure", "std_image"]
