"""Forward models y = A(x) + sigma_y n on images x of shape (B, C, H, W) in [-1, 1].

Every linear operator has `A`, a true adjoint `A_adjoint` (<A x, y> = <x, A_adjoint y>), a closed-form
pseudo-inverse `A_pinv` where one exists, and `naive`, the simple reconstruction shown as the baseline
(and used by SDEdit as its starting point). Operators are `nn.Module`s only so that `.to(device)`
moves their fixed tensors; nothing changes when they are called. Randomness (a box position, a
pixel mask, a motion-blur kernel) is drawn once, at construction, from a seed.

Blur is circular convolution, computed with FFTs: that makes A, its adjoint and its pseudo-inverse
exact and fast. Super-resolution is separable resampling by explicit matrices (MATLAB-style
antialiased bicubic by default, as the DPS reference, or box averaging). Colourisation averages the
channels.

Every linear operator here also has a closed-form SVD (`V_T`, `V`, `U_T`, `U`, `singulars`; see
`LinearOperator`), which the spectral solvers (DDRM, DDNM+) need, and the least-squares step `prox`
of the proximal and plug-and-play solvers: closed-form through the SVD, by conjugate gradients otherwise.
"""

from __future__ import annotations

import math
import numbers
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .io import RANGE_HINT
from .schedule import randn_like


class Operator(nn.Module):
    """A forward model A: images (B, C, H, W) -> measurements. Non-linear ones only need `A`."""

    name = "operator"
    linear = False

    def A(self, x: Tensor) -> Tensor:
        """The noiseless measurement of images x, (B, C, H, W) -> (B, ...)."""
        raise NotImplementedError(f"{type(self).__name__} does not define A(x): an Operator's subclass defines A "
                                  "(not forward)")

    def forward(self, x: Tensor) -> Tensor:  # op(x) is A(x)
        return self.A(x)

    def naive(self, y: Tensor) -> Tensor:
        """A simple reconstruction of x from y: the baseline a solver has to beat."""
        raise NotImplementedError(f"{self.name} has no naive reconstruction")


def implements(op: Operator, method: str) -> bool:
    """Whether op's class defines `method` (A_adjoint, A_pinv, naive) rather than inheriting the base's refusal."""
    base = LinearOperator if op.linear else Operator
    return getattr(type(op), method, None) not in (None, getattr(base, method, None))


class LinearOperator(Operator):
    """A linear forward model. Subclasses with a closed-form singular value decomposition set `has_svd`.

    The SVD A = U diag(s) V^T is exposed through four maps and the singular values. Spectral coefficients
    are tensors shaped like the image x, (B, C, H, W) (their `flatten(1)` is the (B, N) coefficient vector),
    real except for Blur, whose basis is the unitary DFT (see there). `singulars(x)` broadcasts against
    them and is zero on the null space of A; `U_T(y)` is zero there too and `U` ignores those entries, so
        A x = U(s * V_T(x)),   A^T y = V(s * U_T(y)),   A^+ y = V(U_T(y) / s)  (where s > 0).
    For complex coefficients V_T and U_T are the conjugate transposes. Standard normal noise in the
    spectral domain is V_T(z) for pixel noise z: that keeps the symmetry of complex coefficients.
    """

    linear = True
    has_svd = False

    def A_adjoint(self, y: Tensor) -> Tensor:
        """The adjoint: <A x, y> = <x, A_adjoint y> for every x and y."""
        raise NotImplementedError(f"{self.name} has no adjoint A_adjoint")

    def A_pinv(self, y: Tensor) -> Tensor:
        """The Moore-Penrose pseudo-inverse, where it is closed-form."""
        raise NotImplementedError(f"{self.name} has no closed-form pseudo-inverse")

    def naive(self, y: Tensor) -> Tensor:
        return self.A_pinv(y)

    # -- the SVD, where one is closed-form -------------------------------------------------------------
    def V_T(self, x: Tensor) -> Tensor:
        """Image -> spectral coefficients (shaped like x)."""
        raise NotImplementedError(f"{self.name} has no closed-form SVD")

    def V(self, c: Tensor) -> Tensor:
        """Spectral coefficients -> image; V(V_T(x)) = x."""
        raise NotImplementedError(f"{self.name} has no closed-form SVD")

    def U_T(self, y: Tensor) -> Tensor:
        """Measurement -> spectral coefficients (shaped like x, zero where s = 0)."""
        raise NotImplementedError(f"{self.name} has no closed-form SVD")

    def U(self, c: Tensor) -> Tensor:
        """Spectral coefficients -> measurement; entries where s = 0 are ignored."""
        raise NotImplementedError(f"{self.name} has no closed-form SVD")

    def singulars(self, x: Tensor) -> Tensor:
        """The singular values s for images like x: real, x's dtype, broadcastable against V_T(x)."""
        raise NotImplementedError(f"{self.name} has no closed-form SVD")

    # -- the least-squares step that proximal and plug-and-play solvers take ------------------------------
    def prox(self, z: Tensor, y: Tensor, rho: float) -> Tensor:
        """argmin_x ||y - A x||^2 + rho ||x - z||^2 = (A^T A + rho I)^-1 (A^T y + rho z), for rho >= 0.

        rho = 0 is the limit rho -> 0: A^+ y + (I - A^+ A) z, the point of {x : A x = proj y} nearest z.
        In closed form through the SVD where there is one: per coefficient (s U_T(y) + rho V_T(z)) / (s^2 + rho);
        otherwise by conjugate gradients.
        """
        if rho < 0:
            raise ValueError(f"rho must be >= 0, got {rho}")
        if not self.has_svd:
            return self.prox_cg(z, y, rho)
        c, d, s = self.V_T(z), self.U_T(y), self.singulars(z)
        denom = s ** 2 + rho
        return self.V(torch.where(denom > 0, (s * d + rho * c) / denom.clamp_min(torch.finfo(s.dtype).tiny), c))

    def prox_cg(self, z: Tensor, y: Tensor, rho: float, *, iters: int = 200, rtol: float = 1e-7) -> Tensor:
        """`prox` by conjugate gradients on (A^T A + rho I) x = A^T y + rho z, started at z, for any linear
        operator. Started at z, CG also finds the rho = 0 limit: the correction stays in the range of A^T."""
        dims = tuple(range(1, z.dim()))
        dot = lambda a, b: (a * b).sum(dims, keepdim=True)  # noqa: E731  per-image inner products
        normal = lambda v: self.A_adjoint(self.A(v)) + rho * v  # noqa: E731
        x = z.clone()
        r = self.A_adjoint(y) + rho * z - normal(x)
        p, rr = r.clone(), dot(r, r)
        stop = rtol ** 2 * dot(self.A_adjoint(y) + rho * z, self.A_adjoint(y) + rho * z).clamp_min(1e-30)
        for _ in range(iters):
            if bool((rr <= stop).all()):
                break
            Ap = normal(p)
            alpha = rr / dot(p, Ap).clamp_min(1e-30)
            x, r = x + alpha * p, r - alpha * Ap
            rr_new = dot(r, r)
            p, rr = r + (rr_new / rr.clamp_min(1e-30)) * p, rr_new
        return x


def check_noise_level(sigma_y) -> float:
    """sigma_y as a float: a finite number >= 0 (ValueError otherwise)."""
    if isinstance(sigma_y, Tensor) and sigma_y.numel() == 1 or getattr(sigma_y, "shape", None) == ():
        sigma_y = sigma_y.item()  # a one-element tensor, a 0-d NumPy array
    if isinstance(sigma_y, bool) or not isinstance(sigma_y, numbers.Real) or not 0 <= sigma_y < math.inf:
        raise ValueError(f"sigma_y={sigma_y!r}: expected a finite number >= 0 (the measurement noise std)")
    return float(sigma_y)


def measure(op: Operator, x: Tensor, sigma_y: float, generator: torch.Generator | None = None) -> Tensor:
    """y = A(x) + sigma_y n, with n standard normal (sigma_y in the units of x, i.e. of [-1, 1]); a new tensor."""
    sigma_y = check_noise_level(sigma_y)
    y = noiseless(op, x)
    return y + sigma_y * randn_like(y, generator) if sigma_y > 0 else y.clone()


def noiseless(op: Operator, x: Tensor) -> Tensor:
    """A(x) for a batch of images x, refusing (TypeError, ValueError) what no measurement can be made of."""
    if not isinstance(op, Operator):
        raise TypeError(f"measure needs a diffprior Operator, e.g. dp.make_operator('box-inpaint', (3, 64, 64)); "
                        f"got {type(op).__name__}")
    if not isinstance(x, Tensor) or not x.is_floating_point():
        kind = x.dtype if isinstance(x, Tensor) else type(x).__name__
        raise TypeError(f"measure needs floating-point images in [-1, 1], got {kind}")
    if x.dim() != 4 or x.shape[0] == 0:
        raise ValueError(f"measure needs a batch of images (B, C, H, W), got shape {tuple(x.shape)}"
                         + (": for one image, add the batch dimension (x[None])" if x.dim() == 3 else ""))
    largest = float(x.detach().abs().max())
    if not math.isfinite(largest):
        raise ValueError("measure needs finite images: x holds NaN or infinite values")
    if largest > 10:  # no image in [-1, 1] (an analytic prior's draws reach past 1): pixels in [0, 255]
        warnings.warn(f"the images reach {largest:.4g}: {RANGE_HINT}", stacklevel=2)
    try:
        y = op.A(x)
    except NotImplementedError:
        raise
    except RuntimeError as e:  # e.g. a batch of per-image masks for another number of images
        raise ValueError(f"{op.name} does not take images of shape {tuple(x.shape)} ({e})") from None
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"{op.name} makes {y.shape[0]} measurements from a batch of {x.shape[0]} images: its "
                         "per-image parts (e.g. masks) must number 1 or the batch's images")
    return y


def check_linear(op: Operator, like: Tensor) -> None:
    """Refuse (ValueError) an operator marked linear whose `A` is not linear, or whose `A_adjoint` is not the
    adjoint of its `A`: probed with random images shaped like `like`, drawn from a fixed seed (the caller's
    random state is untouched). A linear operator without an adjoint passes (the solvers that need one say
    so). The tolerances, relative to the norms involved, pass float32 rounding and TF32 matmuls (1e-3 per
    entry) by a wide margin; a wrong formula misses them by orders of magnitude (a wrong adjoint is off by
    about 1 / sqrt(entries of y), a non-linearity by a share of the norm)."""
    if not op.linear:
        return
    g = torch.Generator().manual_seed(0)
    x1, x2 = (torch.randn(like.shape, generator=g, dtype=like.dtype).to(like.device) for _ in range(2))
    with torch.no_grad(), torch.autocast(like.device.type, enabled=False):
        a1, a2 = op.A(x1), op.A(x2)
        gap = float((op.A(x1 + 2 * x2) - a1 - 2 * a2).norm())
        if gap > 1e-2 * float(a1.norm() + 2 * a2.norm()):
            raise ValueError(f"{op.name} is marked linear, but A(x1 + 2 x2) differs from A(x1) + 2 A(x2) (by "
                             f"{gap:.3g} in norm): a non-linear operator subclasses Operator, not LinearOperator")
        y = torch.randn(a1.shape, generator=g, dtype=like.dtype).to(like.device)
        try:
            back = op.A_adjoint(y)
        except NotImplementedError:
            return
        forward, adjoint = float((a1 * y).sum()), float((x1 * back).sum())
        if abs(forward - adjoint) > 1e-4 * float(a1.norm() * y.norm() + x1.norm() * back.norm()):
            raise ValueError(f"{op.name}.A_adjoint is not the adjoint of its A: <A x, y> = {forward:.6g}, but "
                             f"<x, A_adjoint(y)> = {adjoint:.6g} for random x and y")


# ---------------------------------------------------------------------------------------------------
class Identity(LinearOperator):
    """Denoising: A = I."""

    name = "denoise"
    has_svd = True

    def A(self, x):
        return x

    def A_adjoint(self, y):
        return y

    def A_pinv(self, y):
        return y

    def V_T(self, x):
        return x

    V = U_T = U = V_T

    def singulars(self, x):
        return torch.ones_like(x[:1])


class Inpaint(LinearOperator):
    """y = m * x for a binary mask m (1 = observed pixel, 0 = missing), shared by all channels.

    A is an orthogonal projection, so A_adjoint = A_pinv = A. `naive` fills the holes with each
    image's mean observed colour. SVD: U = V = I and s = m, pixel by pixel.
    """

    name = "inpaint"
    has_svd = True

    def __init__(self, mask: Tensor):
        super().__init__()
        mask = torch.as_tensor(mask, dtype=torch.float32).clone()  # the caller's tensor may change later
        shape = tuple(mask.shape)
        if 2 <= mask.dim() <= 4:
            mask = mask.reshape((1,) * (4 - mask.dim()) + shape)
        if mask.dim() != 4 or mask.shape[1] != 1 or mask.numel() == 0 or not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError(f"an inpainting mask must be binary with shape (H, W), (1, H, W) or (B, 1, H, W), got {shape}")
        if not bool(mask.flatten(1).amax(1).all()):
            raise ValueError("the inpainting mask observes no pixel at all")
        self.register_buffer("mask", mask)

    def _check(self, x: Tensor) -> Tensor:
        if x.shape[-2:] != self.mask.shape[-2:]:
            raise ValueError(f"mask of size {tuple(self.mask.shape[-2:])} does not fit an image of size "
                             f"{tuple(x.shape[-2:])}")
        return self.mask.to(x.dtype)

    def A(self, x):
        return x * self._check(x)

    def A_adjoint(self, y):
        return y * self._check(y)

    def A_pinv(self, y):
        return y * self._check(y)

    def naive(self, y):
        m = self._check(y)
        mean = (y * m).sum((-2, -1), keepdim=True) / m.sum((-2, -1), keepdim=True)
        return y * m + mean * (1 - m)

    def V_T(self, x):
        return x

    V = V_T

    def U_T(self, y):
        return y * self._check(y)

    U = U_T

    def singulars(self, x):
        return self._check(x)


def box_mask(size: int, height: int, width: int | None = None, *, position: tuple[int, int] | None = None,
             margin: int = 0, generator: torch.Generator | None = None) -> Tensor:
    """A (H, W) mask with one size x size hole, at `position` (top, left) or at a random place at least
    `margin` pixels from every border."""
    width = height if width is None else width
    if size < 1:
        raise ValueError(f"a box's size is at least 1 pixel, got {size}")
    if position is None:
        if size > min(height, width) - 2 * margin:
            raise ValueError(f"a {size}x{size} box with margin {margin} does not fit a {height}x{width} image")
        top = int(torch.randint(margin, height - margin - size + 1, (1,), generator=generator))
        left = int(torch.randint(margin, width - margin - size + 1, (1,), generator=generator))
    else:
        top, left = position
        if not (0 <= top <= height - size and 0 <= left <= width - size):
            raise ValueError(f"a {size}x{size} box at {position} does not fit a {height}x{width} image")
    mask = torch.ones(height, width)
    mask[top:top + size, left:left + size] = 0
    return mask


def random_mask(fraction: float, height: int, width: int | None = None, *,
                generator: torch.Generator | None = None) -> Tensor:
    """A (H, W) mask that drops exactly round(fraction * H * W) pixels chosen uniformly at random."""
    width = height if width is None else width
    if not 0 <= fraction < 1:
        raise ValueError(f"the dropped fraction must lie in [0, 1), got {fraction}")
    n = height * width
    mask = torch.ones(n)
    mask[torch.randperm(n, generator=generator)[:round(fraction * n)]] = 0
    return mask.reshape(height, width)


def stroke_mask(strokes: int, brush: int, height: int, width: int | None = None, *,
                generator: torch.Generator | None = None) -> Tensor:
    """A (H, W) mask with free-form holes, like hand-drawn damage (after the free-form masks of Yu et al.
    2019, DeepFill v2): `strokes` polylines of 2-5 segments, each at a random angle and 1/8 to 1/4 of the
    image's shorter side long, `brush` pixels wide with round ends and joints (a pixel is missing when its
    centre lies within brush / 2 of a segment)."""
    width = height if width is None else width
    side = min(height, width)
    if strokes < 1 or not 1 <= brush <= side // 2:
        raise ValueError(f"need at least one stroke and a brush of 1 to {side // 2} pixels for a {height}x{width} "
                         f"image, got {strokes} strokes of {brush}")

    def uniform(low: float, high: float) -> float:
        return low + (high - low) * float(torch.rand((), generator=generator))
    ys, xs = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    hole = torch.zeros(height, width, dtype=torch.bool)
    for _ in range(strokes):
        if hole.all():  # nothing is left to observe (the Inpaint operator refuses the mask): stop drawing
            break
        x, y = uniform(0, width), uniform(0, height)
        for _ in range(int(torch.randint(2, 6, (), generator=generator))):
            angle, length = uniform(0, 2 * math.pi), uniform(side / 8, side / 4)
            x1 = min(max(x + length * math.cos(angle), 0.0), float(width))
            y1 = min(max(y + length * math.sin(angle), 0.0), float(height))
            # distance from each pixel centre to the segment (x, y) -> (x1, y1)
            dx, dy = x1 - x, y1 - y
            along = (((xs - x) * dx + (ys - y) * dy) / max(dx * dx + dy * dy, 1e-12)).clamp(0, 1)
            hole |= (xs - x - along * dx) ** 2 + (ys - y - along * dy) ** 2 <= (brush / 2) ** 2
            x, y = x1, y1
    return (~hole).float()


# ---------------------------------------------------------------------------------------------------
class Blur(LinearOperator):
    """Circular convolution with a (k, k) kernel on (H, W) images, by FFT.

    A = F^-1 diag(K) F, so A_adjoint uses conj(K) and A_pinv uses conj(K) / |K|^2 on the frequencies
    where |K| > rcond * max |K| (zero elsewhere): the exact Moore-Penrose inverse of the thresholded
    operator. `naive` returns y itself (deconvolving noisy data amplifies the noise).

    SVD: with the unitary 2-D DFT F, A = F^-1 diag(K) F = U diag(|K|) V^H for V^H = F and U = F^-1 diag(K / |K|).
    The coefficients are complex, shaped like x, with the Hermitian symmetry of the DFT of a real image;
    real scalings that are symmetric in frequency (all the solvers do) keep it, so V and U return the real
    part of the inverse DFT. Like A_pinv, the SVD is that of the thresholded operator: frequencies with
    |K| <= rcond * max |K| count as null space (s = 0), so U diag(s) V^H = A up to rcond * max |K|.
    """

    name = "blur"
    has_svd = True

    def __init__(self, kernel: Tensor, image_size: tuple[int, int], *, rcond: float = 1e-3):
        super().__init__()
        kernel = torch.as_tensor(kernel, dtype=torch.float64)
        H, W = image_size
        kh, kw = kernel.shape
        if kh > H or kw > W:
            raise ValueError(f"a {kh}x{kw} kernel is larger than the {H}x{W} image")
        padded = torch.zeros(H, W, dtype=torch.float64)
        padded[:kh, :kw] = kernel
        padded = torch.roll(padded, (-(kh // 2), -(kw // 2)), dims=(0, 1))  # kernel centre at the origin
        K = torch.fft.rfft2(padded)
        keep = K.abs() > rcond * K.abs().max()
        self.register_buffer("kernel", kernel.float())
        self.register_buffer("K", K)
        self.register_buffer("K_pinv", torch.where(keep, K.conj() / K.abs().clamp_min(1e-30) ** 2, 0))
        self.image_size = (H, W)
        full = torch.fft.fft2(padded)  # the full (H, W) spectrum, for the SVD
        self.register_buffer("sv", torch.where(full.abs() > rcond * full.abs().max(), full.abs(), 0))
        self.register_buffer("phase", torch.where(self.sv > 0, full / full.abs().clamp_min(1e-30), 1))

    def A(self, x):
        return _circular(x, self.K, self.image_size)

    def A_adjoint(self, y):
        return _circular(y, self.K.conj(), self.image_size)

    def A_pinv(self, y):
        return _circular(y, self.K_pinv, self.image_size)

    def naive(self, y):
        return y

    def _spectral(self, x: Tensor) -> Tensor:
        if tuple(x.shape[-2:]) != self.image_size:
            raise ValueError(f"this blur was built for {self.image_size} images, got {tuple(x.shape[-2:])}")
        return torch.fft.fft2(x if x.dtype == torch.float64 else x.float(), norm="ortho")

    def _phase(self, c: Tensor) -> Tensor:
        return self.phase.to(c.dtype) * (self.sv > 0)

    def V_T(self, x):
        return self._spectral(x)

    def V(self, c):
        return torch.fft.ifft2(c, norm="ortho").real

    def U_T(self, y):
        c = self._spectral(y)
        return c * self._phase(c).conj()

    def U(self, c):
        return torch.fft.ifft2(c * self._phase(c), norm="ortho").real

    def singulars(self, x):
        return self.sv.to(device=x.device, dtype=x.dtype)


def _circular(x: Tensor, spectrum: Tensor, image_size: tuple[int, int]) -> Tensor:
    if tuple(x.shape[-2:]) != image_size:
        raise ValueError(f"this blur was built for {image_size} images, got {tuple(x.shape[-2:])}")
    xf = x if x.dtype == torch.float64 else x.float()  # FFTs in at least single precision
    spectrum = spectrum.to(torch.complex128 if x.dtype == torch.float64 else torch.complex64)
    return torch.fft.irfft2(torch.fft.rfft2(xf) * spectrum, s=image_size).to(x.dtype)


def gaussian_kernel(size: int, std: float) -> Tensor:
    """A normalised (size, size) isotropic Gaussian kernel."""
    if size < 1 or size % 2 == 0 or std <= 0:
        raise ValueError(f"a Gaussian kernel needs an odd size >= 1 and std > 0, got size={size}, std={std}")
    r = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-r ** 2 / (2 * std ** 2))
    k = g[:, None] * g[None, :]
    return k / k.sum()


def motion_kernel(size: int, intensity: float = 0.5, *, generator: torch.Generator | None = None,
                  samples: int = 4096) -> Tensor:
    """A random camera-shake kernel (in the spirit of Boracchi & Foi 2012): a 2-D trajectory whose velocity
    drifts by Gaussian steps and jerks with a probability that grows with `intensity` in [0, 1], scaled
    to span the (size, size) support and splatted bilinearly. intensity = 0 gives a straight line."""
    if size < 3 or size % 2 == 0 or not 0 <= intensity <= 1:
        raise ValueError(f"a motion kernel needs an odd size >= 3 and intensity in [0, 1], got {size}, {intensity}")
    rand = lambda *shape: torch.rand(*shape, generator=generator, dtype=torch.float64)  # noqa: E731
    randn = lambda *shape: torch.randn(*shape, generator=generator, dtype=torch.float64)  # noqa: E731
    angle = 2 * math.pi * rand(1)
    v = torch.cat([torch.cos(angle), torch.sin(angle)])
    steps = torch.empty(samples, 2, dtype=torch.float64)
    jerk_p, drift = intensity * 0.01, intensity * 0.15
    for i in range(samples):
        v = v + drift * randn(2)
        if rand(1) < jerk_p:  # an abrupt change of direction
            v = -v + randn(2) * intensity
        v = v / v.norm().clamp_min(1e-12)
        steps[i] = v
    path = torch.cumsum(steps, 0)
    path = path - (path.amax(0) + path.amin(0)) / 2  # centre the trajectory's bounding box
    extent = (path.amax(0) - path.amin(0)).max().clamp_min(1e-12)
    path = path * ((size - 1) / extent) * 0.999 + size // 2
    k = torch.zeros(size, size, dtype=torch.float64)
    i0, j0 = path[:, 1].floor().long(), path[:, 0].floor().long()
    fi, fj = path[:, 1] - i0, path[:, 0] - j0
    for di, wi in ((0, 1 - fi), (1, fi)):
        for dj, wj in ((0, 1 - fj), (1, fj)):
            ii, jj = (i0 + di).clamp(0, size - 1), (j0 + dj).clamp(0, size - 1)
            k.index_put_((ii, jj), wi * wj, accumulate=True)
    return k / k.sum()


# ---------------------------------------------------------------------------------------------------
class SuperResolution(LinearOperator):
    """Downsampling by an integer factor: y = R_h x R_w^T per channel with explicit resampling matrices.

    kernel="bicubic": MATLAB's imresize (antialiased cubic, a = -0.5, symmetric borders), as the DPS
    reference; kernel="box": average pooling. The adjoint is R_h^T y R_w and the pseudo-inverse
    pinv(R_h) y pinv(R_w)^T, both exact. `naive` is the pseudo-inverse.

    SVD: from R_h = U_h diag(s_h) V_h^T and R_w = U_w diag(s_w) V_w^T (V square), A = R_h (.) R_w^T has
    V_T(x) = V_h^T x V_w, singular values s_h[i] s_w[j] in the top-left (H/f, W/f) block of the (H, W)
    coefficient array and zeros elsewhere, and U_T(y) = U_h^T y U_w in that block.
    """

    name = "super-resolution"
    has_svd = True

    def __init__(self, factor: int, image_size: tuple[int, int], *, kernel: str = "bicubic"):
        super().__init__()
        H, W = image_size
        if isinstance(factor, bool) or not isinstance(factor, numbers.Integral) or factor < 1:
            raise ValueError(f"the factor must be a whole number >= 1, got {factor!r}")
        if H % factor or W % factor:
            raise ValueError(f"the image size {H}x{W} is not divisible by the factor {factor}")
        Rh, Rw = (resize_matrix(n, factor, kernel).float() for n in (H, W))
        self.register_buffer("Rh", Rh)
        self.register_buffer("Rw", Rw)
        self.register_buffer("Rh_pinv", torch.linalg.pinv(Rh.double()).float())
        self.register_buffer("Rw_pinv", torch.linalg.pinv(Rw.double()).float())
        self.factor, self.image_size = factor, (H, W)
        # the SVD of the stored (float32-rounded) matrices, kept in float64
        (Uh, sh, Vh_T), (Uw, sw, Vw_T) = (torch.linalg.svd(R.double()) for R in (Rh, Rw))
        for name, value in (("Uh", Uh), ("Vh", Vh_T.T), ("Uw", Uw), ("Vw", Vw_T.T)):
            self.register_buffer(name, value.contiguous())
        s = torch.zeros(H, W, dtype=torch.float64)
        s[:H // factor, :W // factor] = sh[:, None] * sw[None, :]
        self.register_buffer("sv", s)

    def _check(self, x, size):
        if tuple(x.shape[-2:]) != size:
            raise ValueError(f"expected an input of spatial size {size}, got {tuple(x.shape[-2:])}")

    def A(self, x):
        self._check(x, self.image_size)
        return self.Rh.to(x.dtype) @ x @ self.Rw.to(x.dtype).T

    def A_adjoint(self, y):
        self._check(y, (self.image_size[0] // self.factor, self.image_size[1] // self.factor))
        return self.Rh.to(y.dtype).T @ y @ self.Rw.to(y.dtype)

    def A_pinv(self, y):
        self._check(y, (self.image_size[0] // self.factor, self.image_size[1] // self.factor))
        return self.Rh_pinv.to(y.dtype) @ y @ self.Rw_pinv.to(y.dtype).T

    def V_T(self, x):
        self._check(x, self.image_size)
        return self.Vh.to(x.dtype).T @ x @ self.Vw.to(x.dtype)

    def V(self, c):
        return self.Vh.to(c.dtype) @ c @ self.Vw.to(c.dtype).T

    def U_T(self, y):
        h, w = self.image_size[0] // self.factor, self.image_size[1] // self.factor
        self._check(y, (h, w))
        block = self.Uh.to(y.dtype).T @ y @ self.Uw.to(y.dtype)
        return F.pad(block, (0, self.image_size[1] - w, 0, self.image_size[0] - h))

    def U(self, c):
        h, w = self.image_size[0] // self.factor, self.image_size[1] // self.factor
        return self.Uh.to(c.dtype) @ c[..., :h, :w] @ self.Uw.to(c.dtype).T

    def singulars(self, x):
        return self.sv.to(device=x.device, dtype=x.dtype)


def _cubic(x: Tensor, a: float = -0.5) -> Tensor:
    x = x.abs()
    near = ((a + 2) * x - (a + 3)) * x ** 2 + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return torch.where(x <= 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


def resize_matrix(n: int, factor: int, kernel: str = "bicubic") -> Tensor:
    """The (n // factor, n) float64 matrix that downsamples a length-n signal by `factor`."""
    m = n // factor
    R = torch.zeros(m, n, dtype=torch.float64)
    if kernel == "box":
        for i in range(m):
            R[i, i * factor:(i + 1) * factor] = 1 / factor
        return R
    if kernel != "bicubic":
        raise ValueError(f"unknown resampling kernel {kernel!r}; expected 'bicubic' or 'box'")
    # MATLAB imresize, scale 1/factor: the cubic kernel is stretched by `factor` (antialiasing).
    width = 4.0 * factor
    for i in range(m):
        centre = (i + 0.5) * factor - 0.5  # output pixel centre in input coordinates (0-based)
        js = torch.arange(math.floor(centre - width / 2), math.ceil(centre + width / 2) + 1)
        w = _cubic((centre - js.double()) / factor)
        w = w / w.sum()
        mirrored = js.clone()
        period = 2 * n
        mirrored = mirrored % period
        mirrored = torch.where(mirrored >= n, period - 1 - mirrored, mirrored)  # symmetric borders
        R[i].index_add_(0, mirrored, w)
    return R


# ---------------------------------------------------------------------------------------------------
LUMINANCE = (0.299, 0.587, 0.114)  # ITU-R BT.601 luma weights


class Colorize(LinearOperator):
    """RGB -> grey: y = sum_c w_c x_c, shape (B, 1, H, W), with weights w = (1/3, 1/3, 1/3) (the mean of the
    channels, as DDNM) or the luminance weights.

    Per pixel A is the 1 x 3 row w^T, so A_adjoint y = w y, A_pinv y = w y / |w|^2 (for the mean: y in every
    channel) and the SVD has one singular value |w|: V is a 3 x 3 orthonormal basis whose first vector is
    w / |w|, s = (|w|, 0, 0) over the channel axis of the coefficients, U = 1 on channel 0.
    """

    name = "colorize"
    has_svd = True

    def __init__(self, weights: str | tuple[float, float, float] = "mean"):
        super().__init__()
        if isinstance(weights, str):
            if weights not in ("mean", "luminance"):
                raise ValueError(f"unknown colour weights {weights!r}; expected 'mean', 'luminance' or three numbers")
            weights = (1 / 3,) * 3 if weights == "mean" else LUMINANCE
        w = torch.as_tensor(weights, dtype=torch.float64).flatten()
        if w.numel() != 3 or float(w.norm()) == 0:
            raise ValueError(f"colour weights must be three numbers, not all zero; got {weights}")
        Q, _ = torch.linalg.qr(torch.cat([w[:, None], torch.eye(3, dtype=torch.float64)], 1), mode="complete")
        Q = Q[:, :3] * torch.sign(Q[:, 0] @ w)  # first column +w / |w|
        self.register_buffer("w", w)
        self.register_buffer("basis", Q)  # (3, 3), columns orthonormal

    def _weights(self, x: Tensor, size: int = 3) -> Tensor:
        if x.dim() != 4 or x.shape[1] != size:
            raise ValueError(f"colourisation expects {size}-channel input (B, {size}, H, W), got {tuple(x.shape)}")
        return self.w.to(x.dtype)[:, None, None]

    def A(self, x):
        return (self._weights(x) * x).sum(1, keepdim=True)

    def A_adjoint(self, y):
        return self._weights(y, 1) * y

    def A_pinv(self, y):
        return self._weights(y, 1) * y / self.w.square().sum().to(y.dtype)

    def V_T(self, x):
        self._weights(x)
        return torch.einsum("kc,bkhw->bchw", self.basis.to(x.dtype), x)

    def V(self, c):
        return torch.einsum("kc,bchw->bkhw", self.basis.to(c.dtype), c)

    def U_T(self, y):
        self._weights(y, 1)
        return F.pad(y, (0, 0, 0, 0, 0, 2))

    def U(self, c):
        return c[:, :1]

    def singulars(self, x):
        return F.pad(self.w.norm().reshape(1, 1, 1, 1), (0, 0, 0, 0, 0, 2)).to(device=x.device, dtype=x.dtype)
