"""DDRM, DDNM(+), PiGDM and DiffPIR against exact answers: analytic Gaussian priors, whose denoiser and
posterior are closed-form (the fixtures in conftest.py), and the identities the algorithms are built on."""

import pytest
import torch

from diffprior.operators import Blur, Colorize, Identity, Inpaint, LinearOperator, SuperResolution, gaussian_kernel
from diffprior.prior import GaussianPrior
from diffprior.solvers import SOLVERS, ddnm, ddrm, dps, pigdm, solve
from diffprior.solvers.diffpir import diffpir_timesteps

N = 1000  # posterior samples per check



def _stats(x):
    flat = x.flatten(1)
    return flat.mean(0), torch.cov(flat.T)


def _errors(problem, x):
    """(posterior-mean error, prior-mean error, relative covariance error) of samples x."""
    target, post_cov = problem["posterior"].mean().flatten(), problem["posterior"].covariance()
    mean, cov = _stats(x)
    return (float((mean - target).norm()), float((problem["prior"].mean().flatten() - target).norm()),
            float((cov - post_cov).norm() / post_cov.norm()))


# name: (method, settings, the largest posterior-mean error allowed as a fraction of the prior mean's,
#        for the inpainting problem and for the blur problem). Measured with N = 1000 (inpainting / blur):
# ddrm 0.25 / 0.43, ddnm (DDNM+) 0.14 / 0.43 at 20 steps, with time travel 0.09, pigdm 0.16 / 0.16,
# diffpir 0.23 / 0.37 (zeta 0.1) and 0.08 / 0.08 (zeta 1); DPS (100 steps, scale 0.3) 0.05 / 0.64.
# (the defaults on the inpainting problem: test_solver_contract.py)
SETTINGS = {
    "ddrm": ("ddrm", {}, None, 0.55),
    "ddnm-20": ("ddnm", dict(steps=20), 0.4, 0.55),
    "ddnm-travel": ("ddnm", dict(travel_length=5, travel_repeat=3), 0.2, None),
    "pigdm": ("pigdm", {}, None, 0.25),
    "diffpir": ("diffpir", {}, None, 0.5),
    "diffpir-zeta1": ("diffpir", dict(zeta=1.0), 0.15, 0.15),
}


@pytest.mark.parametrize("problem", ["gaussian_problem", "gaussian_blur_problem"])
@pytest.mark.parametrize("name", SETTINGS)
def test_solvers_move_toward_the_exact_posterior(request, problem, name):
    method, settings, *limits = SETTINGS[name]
    limit = limits[problem == "gaussian_blur_problem"]
    if limit is None:
        pytest.skip("not run on this problem (see test_ddrm_is_made_for_few_steps and test_solver_contract.py)")
    p = request.getfixturevalue(problem)
    prior, op, y = p["prior"], p["op"], p["y"]
    x = solve(method, prior, op, y.expand(N, -1, -1, -1), sigma_y=p["sigma_y"],
              generator=torch.Generator().manual_seed(0), **settings)
    error, prior_error, cov_error = _errors(p, x)
    print(f"{name} on {problem}: posterior-mean error {error:.3f} (prior mean: {prior_error:.3f}), "
          f"covariance error {cov_error:.2f}")
    assert error < limit * prior_error
    fit = (op.A(x) - y).flatten(1).norm(dim=1).mean()
    prior_fit = (op.A(prior.sample(N, torch.Generator().manual_seed(9))) - y).flatten(1).norm(dim=1).mean()
    assert float(fit) < 0.5 * float(prior_fit)


def test_ddrm_samples_the_posterior_closely_with_many_steps(gaussian_problem):
    """On inpainting (singular values 0 and 1, noise 0.1), DDRM with 1000 steps comes close to an exact
    sampler: measured mean error 0.12 (an exact sampler's Monte Carlo error is about 0.06) and relative
    covariance error 0.22 (about 0.1)."""
    p = gaussian_problem
    x = ddrm(p["prior"], p["op"], p["y"].expand(N, -1, -1, -1), steps=1000, sigma_y=p["sigma_y"],
             generator=torch.Generator().manual_seed(0))
    error, prior_error, cov_error = _errors(p, x)
    print(f"ddrm, 1000 steps: posterior-mean error {error:.3f} (prior mean {prior_error:.3f}), covariance {cov_error:.2f}")
    assert error < 0.2 and cov_error < 0.35


def test_ddrm_is_made_for_few_steps(gaussian_blur_problem):
    """DDRM's pull towards y on the components measured through more noise than x_t carries,
    sqrt(1 - eta^2) sigma_prev / n_i per step, does not shrink with the step: more steps do not converge to
    the posterior but over-fit the noisiest components (small singular values of the blur). The paper's
    20 steps are the right default; DDNM+ (the same update) behaves alike. Measured: 1.8 at 20 steps,
    3.0 at 100 (prior mean 4.2)."""
    p = gaussian_blur_problem
    errors = [_errors(p, ddrm(p["prior"], p["op"], p["y"].expand(500, -1, -1, -1), steps=steps, sigma_y=p["sigma_y"],
                              generator=torch.Generator().manual_seed(0)))[0] for steps in (20, 100)]
    print(f"ddrm on blur: posterior-mean error {errors[0]:.3f} with 20 steps, {errors[1]:.3f} with 100")
    assert errors[0] < 0.8 * errors[1]


@pytest.mark.parametrize("problem", ["gaussian_problem", "gaussian_blur_problem"])
def test_ddnm_plus_is_ddrm_with_eta_b_one(request, problem):
    """With the SVD, DDNM+'s Sigma_t and Phi_t give DDRM's update at eta_b = 1, draw for draw."""
    p = request.getfixturevalue(problem)
    y = p["y"].expand(200, -1, -1, -1)
    a = ddrm(p["prior"], p["op"], y, steps=20, sigma_y=p["sigma_y"], generator=torch.Generator().manual_seed(0))
    b = ddnm(p["prior"], p["op"], y, steps=20, sigma_y=p["sigma_y"], generator=torch.Generator().manual_seed(0))
    assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("blur", [False, True])
def test_pigdm_is_exact_for_a_standard_normal_prior(gaussian_problem, blur):
    """PiGDM's r_t^2 = 1 - abar_t is the exact posterior variance of x_0 given x_t under a N(0, I) prior,
    so there its guidance is the exact likelihood score and DDIM samples the exact posterior."""
    shape = (1, 4, 4)
    prior = GaussianPrior(torch.zeros(shape, dtype=torch.float64), torch.ones(16, dtype=torch.float64))
    op = Blur(gaussian_kernel(3, 1.0), (4, 4)) if blur else gaussian_problem["op"]
    sigma_y = 0.1
    x_true = prior.sample(1, torch.Generator().manual_seed(2))
    y = op.A(x_true) + sigma_y * torch.randn(x_true.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    M = torch.stack([op.A(e.reshape(1, *shape)).flatten() for e in torch.eye(16, dtype=torch.float64)], 1)
    p = dict(prior=prior, posterior=prior.posterior(M, y.flatten(), sigma_y))
    x = pigdm(prior, op, y.expand(N, -1, -1, -1), sigma_y=sigma_y, generator=torch.Generator().manual_seed(0))
    error, prior_error, cov_error = _errors(p, x)
    floor = float(p["posterior"].covariance().trace() / N) ** 0.5  # an exact sampler's Monte Carlo error
    print(f"pigdm, N(0, I) prior: posterior-mean error {error:.3f} (exact sampler ~{floor:.3f}), covariance {cov_error:.2f}")
    assert error < 3 * floor and cov_error < 0.2


@pytest.mark.parametrize("method", ["ddrm", "ddnm", "diffpir"])
@pytest.mark.parametrize("problem", ["gaussian_problem", "gaussian_blur_problem"])
def test_noiseless_measurements_are_matched_exactly(request, method, problem):
    """With sigma_y = 0, DDRM's last step takes y's components, DDNM's range-space correction and DiffPIR's
    rho = 0 data step are projections onto {A x = y}: the output reproduces y to rounding."""
    p = request.getfixturevalue(problem)
    y = p["op"].A(p["x"]).expand(16, -1, -1, -1)
    x = SOLVERS[method](p["prior"], p["op"], y, steps=20, sigma_y=0.0, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(p["op"].A(x), y, atol=1e-8)


class Opaque(LinearOperator):
    """A linear operator that hides the SVD of another: only A, its adjoint and its pseudo-inverse."""

    def __init__(self, op):
        super().__init__()
        self.op, self.name = op, "opaque"

    def A(self, x):
        return self.op.A(x)

    def A_adjoint(self, y):
        return self.op.A_adjoint(y)

    def A_pinv(self, y):
        return self.op.A_pinv(y)


@pytest.mark.parametrize("method", ["pigdm", "diffpir"])
def test_conjugate_gradients_replace_the_svd(gaussian_blur_problem, method):
    """Without an SVD, PiGDM's and DiffPIR's least-squares steps run by conjugate gradients: same samples."""
    p = gaussian_blur_problem
    y = p["y"].expand(8, -1, -1, -1)
    runs = [SOLVERS[method](p["prior"], op, y, steps=20, sigma_y=p["sigma_y"], generator=torch.Generator().manual_seed(0))
            for op in (p["op"], Opaque(p["op"]))]
    assert torch.allclose(*runs, atol=1e-6)


def test_spectral_solvers_need_an_svd(gaussian_problem):
    p = gaussian_problem
    op = Opaque(p["op"])
    with pytest.raises(ValueError, match="SVD"):
        ddrm(p["prior"], op, p["y"])
    with pytest.raises(ValueError, match="SVD"):
        ddnm(p["prior"], op, p["y"], sigma_y=0.1)
    x = ddnm(p["prior"], op, p["y"].expand(4, -1, -1, -1), steps=10, sigma_y=0.0)  # plain DDNM needs A^+ only
    assert x.shape == (4, 1, 4, 4)


def _operators():
    """Every kind of operator on 3-channel (3, 4, 4) images."""
    mask = (torch.arange(16).reshape(4, 4) % 3 != 0).double()
    return {"inpaint": Inpaint(mask), "blur": Blur(gaussian_kernel(3, 0.8), (4, 4)),
            "sr": SuperResolution(2, (4, 4), kernel="box"), "colorize": Colorize(), "denoise": Identity()}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("op_name", list(_operators()))
@pytest.mark.parametrize("method", ["ddrm", "ddnm", "pigdm", "diffpir"])
def test_every_operator(method, op_name, dtype):
    """Each solver runs on each operator (real, complex and channel-mixing SVDs) and fits y better than the prior."""
    op = _operators()[op_name]
    g = torch.Generator().manual_seed(0)
    L = torch.randn(48, 48, generator=g, dtype=torch.float64)
    prior = GaussianPrior(torch.zeros(3, 4, 4, dtype=torch.float64), L @ L.T / 48 + 0.05 * torch.eye(48, dtype=torch.float64))
    x_true = prior.sample(1, torch.Generator().manual_seed(1))
    y = (op.A(x_true) + 0.05 * torch.randn(op.A(x_true).shape, generator=g, dtype=torch.float64)).to(dtype)
    x = solve(method, prior, op, y.expand(64, -1, -1, -1), sigma_y=0.05, steps=20, generator=torch.Generator().manual_seed(0))
    assert x.shape == (64, 3, 4, 4) and x.dtype == dtype and bool(x.isfinite().all())
    fit = (op.A(x) - y).flatten(1).norm(dim=1).mean()
    prior_fit = (op.A(prior.sample(64, torch.Generator().manual_seed(2)).to(dtype)) - y).flatten(1).norm(dim=1).mean()
    assert float(fit) < 0.3 * float(prior_fit)


def test_diffpir_timesteps():
    sched = GaussianPrior(torch.zeros(1), torch.ones(1)).schedule
    quad = diffpir_timesteps(sched, 100, "quad")
    assert len(quad) == 100 and quad[0] == 999 and quad[-1] == 0
    gaps = [a - b for a, b in zip(quad, quad[1:])]
    assert gaps[0] == 100 and max(gaps[-10:]) <= 6  # big jumps at high noise, small ones near the data
    assert diffpir_timesteps(sched, 100, "uniform") == sched.timesteps(100)
    with pytest.raises(ValueError, match="spacing"):
        diffpir_timesteps(sched, 100, "cubic")


def test_dps_reference_on_the_blur_problem(gaussian_blur_problem):
    """For comparison with the table above: DPS (100 steps, scale 0.3) on the blur problem."""
    p = gaussian_blur_problem
    x = dps(p["prior"], p["op"], p["y"].expand(N, -1, -1, -1), steps=100, scale=0.032, ref_size=None, generator=torch.Generator().manual_seed(0))
    error, prior_error, _ = _errors(p, x)
    print(f"dps on gaussian_blur_problem: posterior-mean error {error:.3f} (prior mean: {prior_error:.3f})")
    assert error < prior_error
