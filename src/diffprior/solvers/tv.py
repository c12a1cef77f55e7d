"""Total-variation regularised least squares: Rudin, Osher & Fatemi 1992, solved by the primal-dual
method of Chambolle & Pock 2011 ("A first-order primal-dual algorithm for convex problems with
applications to imaging", Algorithm 1). The classical baseline the diffusion solvers are compared with."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..operators import Inpaint, LinearOperator, Operator, implements
from ..prior import Prior
from .sampling import progress_bar
from .spec import SolverSpec

# tau / sigma = STEP_RATIO^2: images move by O(1) while the dual variables stay below the weight, so a larger
# primal step converges faster; 3 was best over inpainting, deblurring and super-resolution at 300 iterations
STEP_RATIO = 3.0


def grad(x: Tensor) -> Tensor:
    """Forward differences (B, C, H, W) -> (B, C, 2, H, W): vertical, horizontal; zero across the far border
    (Neumann boundary), so ||grad|| <= sqrt(8)."""
    dv = F.pad(x[..., 1:, :] - x[..., :-1, :], (0, 0, 0, 1))
    dh = F.pad(x[..., :, 1:] - x[..., :, :-1], (0, 1))
    return torch.stack([dv, dh], dim=2)


def grad_adjoint(g: Tensor) -> Tensor:
    """The adjoint of `grad` (minus the divergence): (B, C, 2, H, W) -> (B, C, H, W)."""
    gv, gh = g[:, :, 0, :-1, :], g[:, :, 1, :, :-1]  # the far-border entries are not in grad's range
    return (F.pad(gv, (0, 0, 1, 0)) - F.pad(gv, (0, 0, 0, 1))) + (F.pad(gh, (1, 0)) - F.pad(gh, (0, 1)))


def harmonic_fill(y: Tensor, mask: Tensor, tol: float = 1e-5) -> Tensor:
    """The observed pixels (mask 1), and the holes filled by harmonic interpolation of their borders: the image
    of least Dirichlet energy ||grad x||^2 that keeps the observed pixels (the solution of Laplace's equation
    in each hole), each channel alone. Solved by conjugate gradients on the hole's pixels; each channel stops
    when its residual falls below tol times its start (about one iteration per pixel of the hole's width), so
    an image's fill does not depend on the other images of its batch."""
    dtype = y.dtype
    if y.device.type != "mps":  # float64 sums: the same fill whatever the batch and thread layout
        y = y.double()
    mask = mask.to(y.dtype).expand_as(y)
    hole = 1 - mask
    dims = (-2, -1)

    def laplacian(u: Tensor) -> Tensor:  # grad^T grad restricted to the hole: symmetric positive definite
        return grad_adjoint(grad(u * hole)) * hole

    visible = y * mask
    u = torch.zeros_like(y)
    r = -grad_adjoint(grad(visible)) * hole
    p, rr = r, r.square().sum(dims, keepdim=True)
    stop = rr * tol ** 2
    for _ in range(int(hole.sum(dims).max()) + 1):  # exact arithmetic converges within this many
        active = rr > stop
        if not bool(active.any()):
            break
        lp = laplacian(p)
        alpha = active * rr / (p * lp).sum(dims, keepdim=True).clamp_min(torch.finfo(y.dtype).tiny)
        u, r = u + alpha * p, r - alpha * lp
        rr_new = r.square().sum(dims, keepdim=True)
        p, rr = torch.where(active, r + rr_new / rr.clamp_min(torch.finfo(y.dtype).tiny) * p, p), rr_new
    return (visible + u * hole).to(dtype)


def rough_guess(op: Operator, y: Tensor) -> Tensor:
    """A rough image from y, the start of SDEdit and of DPS's warm start: the naive reconstruction, but for
    inpainting the visible pixels with each hole filled by `harmonic_fill` (a flat mean-colour fill, noised to
    t0, came out as a flat patch in the face; docs/MODEL_CARD.md)."""
    return harmonic_fill(y, op.mask) if isinstance(op, Inpaint) else op.naive(y)


def why_no_rough_guess(op: Operator) -> str | None:
    """Why `rough_guess` has nothing to start from: an operator with neither its own naive reconstruction nor
    (linear) a pseudo-inverse; None when it has."""
    if implements(op, "naive") or (op.linear and implements(op, "A_pinv")):
        return None
    return "needs a naive reconstruction to start from"


def tv_norm(x: Tensor, vectorial: bool = False) -> Tensor:
    """Isotropic total variation per image, (B,): the sum over pixels (and channels) of the gradient's length;
    vectorial: one length over the channels together."""
    g = grad(x)
    return (g.square().sum((1, 2)) if vectorial else g.square().sum(2)).sqrt().flatten(1).sum(1)


def objective(op: LinearOperator, x: Tensor, y: Tensor, weight: float, vectorial: bool = False) -> Tensor:
    """0.5 ||A x - y||^2 + weight TV(x), per image (B,)."""
    return 0.5 * (op.A(x) - y).flatten(1).square().sum(1) + weight * tv_norm(x, vectorial)


def operator_norm(op: LinearOperator, like: Tensor, iterations: int = 30) -> float:
    """||A||, by power iteration on A^T A from a fixed random start shaped like `like` (x-space)."""
    x = torch.randn(like.shape, generator=torch.Generator().manual_seed(0), dtype=like.dtype).to(like.device)
    norm = 0.0
    for _ in range(iterations):
        x = x / x.norm()
        x = op.A_adjoint(op.A(x))
        norm = float(x.norm()) ** 0.5  # ||A^T A x|| for a unit x tends to ||A||^2
    return norm


def tv(prior: Prior | None, op: LinearOperator, y: Tensor, *,
       steps: int | None = None,       # primal-dual iterations; None: 300
       weight: float | None = None,    # the TV weight; None: weight_scale * sigma_y
       weight_scale: float = 1.0,      # weight per unit of sigma_y (per-task values: SPEC below)
       sigma_y: float = 0.05,          # measurement noise std on [-1, 1] images (sets the default weight)
       bounded: bool | None = None,    # constrain x to [-1, 1]; None: when the prior's data are images (bounded)
       vectorial: bool = False,        # one gradient length over the colour channels together (vectorial TV)
       generator: torch.Generator | None = None,  # unused: the method is deterministic
       progress: bool = False) -> Tensor:
    """min_x 0.5 ||A x - y||^2 + weight TV(x) (+ the box constraint x in [-1, 1] when `bounded`), with TV the
    isotropic total variation of each channel (Rudin, Osher & Fatemi 1992), by Chambolle & Pock 2011, Alg. 1.

    The prior is ignored but for `bounded`'s default: it is in the signature so that TV runs through `solve`
    like every solver, and `steps` is its iteration count as for every solver. Writing the problem as
    F(K x) + G(x) with K = [A; grad], F(u, g) = 0.5 ||u - y||^2 + weight ||g||_{2,1} and G the box's
    indicator (or 0), each iteration is
        p     <- (p + s (A xbar - y)) / (1 + s)               prox of s F1*, F1 = 0.5 ||. - y||^2
        q     <- q + s grad(xbar), each pixel's 2-vector projected onto the ball of radius weight
        x_new <- clip(x - t (A^T p + grad^T q)),  xbar <- 2 x_new - x
    with s t = (0.99 / L)^2, t / s = STEP_RATIO^2, and L^2 = ||A||^2 + 8 >= ||K||^2 (||A|| by power iteration
    with a 5% margin; ||grad||^2 <= 8), started at the naive reconstruction. Only A and A_adjoint are used,
    so any linear operator works. Vectorial TV (`vectorial`) takes one gradient length per pixel over all
    channels, which keeps colour edges aligned. The default weight is weight_scale * sigma_y (at least weight_scale * 0.01, so that noise-free inpainting
    still fills its holes); the per-task scales in SPEC.task_settings were the best, or within 0.1 dB of it, at
    sigma_y = 0.05 on synthetic piecewise-constant 64x64 images (TV's own model, so natural images may want smaller weights).
    """
    iterations = 300 if steps is None else steps
    bounded = (prior is None or prior.bounded) if bounded is None else bounded
    if not op.linear:
        raise ValueError(f"TV least squares needs a linear operator; {op.name} is not")
    weight = weight_scale * max(sigma_y, 0.01) if weight is None else weight
    if weight < 0 or iterations < 1:
        raise ValueError("the TV weight must be >= 0 and iterations >= 1")
    try:
        x = op.naive(y)
    except NotImplementedError:
        x = op.A_adjoint(y)
    if x.dim() != 4:
        raise ValueError(f"TV works on images (B, C, H, W); got samples of shape {tuple(x.shape)}")
    x = x.clamp(-1, 1) if bounded else x
    # power iteration approaches ||A|| from below: 5% of margin keeps s t ||K||^2 < 1
    step = 0.99 / ((1.05 * operator_norm(op, x)) ** 2 + 8) ** 0.5
    tau, sigma = step * STEP_RATIO, step / STEP_RATIO
    channel_dims = (1, 2) if vectorial else 2
    p, q, xbar = torch.zeros_like(y), torch.zeros_like(grad(x)), x
    for _ in progress_bar(range(iterations), progress, "tv"):
        p = (p + sigma * (op.A(xbar) - y)) / (1 + sigma)
        q = q + sigma * grad(xbar)
        q = q / (q.square().sum(channel_dims, keepdim=True).sqrt() / max(weight, 1e-12)).clamp_min(1)
        x_new = x - tau * (op.A_adjoint(p) + grad_adjoint(q))
        x_new = x_new.clamp(-1, 1) if bounded else x_new
        xbar, x = 2 * x_new - x, x_new
    return x


SPEC = SolverSpec(
    tv, operators="adjoint", random=False,
    nfe=lambda sched, s: 0, budget=lambda nfe, T: {},  # no network: its own defaults at every budget
    # TV weights per unit of sigma_y, best (or within 0.1 dB) at sigma_y = 0.05 on synthetic piecewise-constant
    # images (1.0 elsewhere)
    task_settings={"random-inpaint": {"weight_scale": 0.5}, "gaussian-blur": {"weight_scale": 0.5},
                   "motion-blur": {"weight_scale": 0.25}, "sr4": {"weight_scale": 0.25}})
