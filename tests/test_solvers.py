"""Solvers against exact answers: an analytic Gaussian prior, whose denoiser and posterior are closed-form."""

import pytest
import torch

from diffprior.operators import Operator
from diffprior.prior import GaussianMixturePrior
from diffprior.solvers import denoise, dps, sample, scoreald, solve

N = 1000  # posterior samples per check


def _stats(x):
    flat = x.flatten(1)
    return flat.mean(0), torch.cov(flat.T)


@pytest.mark.parametrize("sampler,steps", [("ddpm", None), ("ddpm", 100), ("ddim", 100)])
def test_unconditional_sampling_reproduces_prior_moments(gaussian_problem, sampler, steps):
    prior = gaussian_problem["prior"]
    x = sample(prior, 4000, steps=steps, sampler=sampler, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    mean, cov = _stats(x)
    assert x.shape == (4000, 1, 4, 4)
    assert float((mean - prior.mean().flatten()).norm()) < 0.08
    assert float((cov - prior.covariance()).norm() / prior.covariance().norm()) < 0.1


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_sampling_keeps_mixture_weights(sampler):
    prior = GaussianMixturePrior(torch.tensor([0.25, 0.75]), torch.tensor([[-2.0, 0.0], [2.0, 0.5]]),
                                 torch.full((2, 2), 0.1))
    x = sample(prior, 4000, steps=200, sampler=sampler, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert float((x[:, 0] < 0).double().mean()) == pytest.approx(0.25, abs=0.03)
    assert float(x[x[:, 0] > 0, 1].std()) == pytest.approx(0.1 ** 0.5, rel=0.1)


def test_single_step_denoising_attains_the_mmse(gaussian_problem):
    """E||x0 - E[x0|x_t]||^2 = tr(Sigma - a Sigma (a Sigma + (1 - a) I)^-1 Sigma) for a Gaussian prior."""
    prior = gaussian_problem["prior"]
    x0 = prior.sample(20_000, torch.Generator().manual_seed(4))
    cov = prior.covariance()
    for t in (100, 500):
        a = prior.schedule.abar_at(t)
        x_t, x0_hat = denoise(prior, x0, t, generator=torch.Generator().manual_seed(t))
        mmse = torch.trace(cov - a * cov @ torch.linalg.solve(a * cov + (1 - a) * torch.eye(16, dtype=torch.float64), cov))
        assert float(((x0 - x0_hat) ** 2).flatten(1).sum(1).mean()) == pytest.approx(float(mmse), rel=0.05)
        assert torch.allclose(x0_hat, prior.x0(x_t, t))


# the default settings of every solver are checked in test_solver_contract.py; here, other variants
SETTINGS = {
    "dps-squared": dict(steps=100, scale=0.0095, loss="squared"),      # zeta = 0.095 per step
}


@pytest.mark.parametrize("name", SETTINGS)
def test_solvers_move_toward_the_exact_posterior(gaussian_problem, name):
    p = gaussian_problem
    prior, op, y, posterior = p["prior"], p["op"], p["y"], p["posterior"]
    method = name.split("-")[0]
    x = solve(method, prior, op, y.expand(N, -1, -1, -1), sigma_y=p["sigma_y"],
              generator=torch.Generator().manual_seed(0), **SETTINGS[name])
    target = posterior.mean().flatten()
    prior_error = float((prior.mean().flatten() - target).norm())
    error = float((_stats(x)[0] - target).norm())
    print(f"{name}: posterior-mean error {error:.3f} (prior mean: {prior_error:.3f})")
    assert error < 0.6 * prior_error
    if method != "sdedit":  # the likelihood-guided solvers fit y better than prior samples do
        fit = (op.A(x) - y).flatten(1).norm(dim=1).mean()
        prior_fit = (op.A(prior.sample(N, torch.Generator().manual_seed(9))) - y).flatten(1).norm(dim=1).mean()
        assert float(fit) < 0.5 * float(prior_fit)


def test_scoreald_samples_the_posterior_closely(gaussian_problem):
    """With all 1000 levels ScoreALD is close to an exact posterior sampler: mean and covariance."""
    p = gaussian_problem
    x = scoreald(p["prior"], p["op"], p["y"].expand(2000, -1, -1, -1), sigma_y=p["sigma_y"], step_size=1.0,
                 generator=torch.Generator().manual_seed(0))
    mean, cov = _stats(x)
    post_cov = p["posterior"].covariance()
    assert float((mean - p["posterior"].mean().flatten()).norm()) < 0.2
    assert float((cov - post_cov).norm() / post_cov.norm()) < 0.2


class Squares(Operator):
    """A non-linear measurement of another shape than x: sums of squares of pixel pairs, (B, 8)."""

    def A(self, x):
        return (x.flatten(1) ** 2).reshape(x.shape[0], 8, 2).sum(-1)


def test_dps_with_a_nonlinear_operator_of_another_shape(gaussian_problem):
    prior = gaussian_problem["prior"]
    op = Squares()
    x_true = gaussian_problem["x"]
    y = op.A(x_true)
    assert y.shape == (1, 8)
    x = dps(prior, op, y.expand(200, -1), steps=100, scale=0.019, ref_size=None, generator=torch.Generator().manual_seed(0))
    fit = (op.A(x) - y).norm(dim=1).mean()
    prior_fit = (op.A(prior.sample(200, torch.Generator().manual_seed(1))) - y).norm(dim=1).mean()
    assert float(fit) < 0.5 * float(prior_fit)


def test_solve_rejects_bad_calls(gaussian_problem):
    p = gaussian_problem
    with pytest.raises(ValueError, match="unknown method"):
        solve("magic", p["prior"], p["op"], p["y"])
    with pytest.raises(ValueError, match="NaN"):
        solve("dps", p["prior"], p["op"], p["y"] * float("nan"))
    with pytest.raises(TypeError):
        solve("dps", p["prior"], p["op"], p["y"], sclae=0.3)
    with pytest.raises(ValueError):
        dps(p["prior"], p["op"], p["y"], loss="l1")


def test_sample_and_denoise_reject_bad_calls(gaussian_problem):
    prior = gaussian_problem["prior"]
    for kwargs, message in [(dict(n=0), "n=0: the number of samples"), (dict(n=2.0), "n=2.0"),
                            (dict(n=1, sampler="ddim", eta=float("nan")), "eta=nan"),
                            (dict(n=1, steps="5"), "steps must be a whole number, got '5'"),
                            (dict(n=1, steps=2.5), "steps must be a whole number"),
                            (dict(n=1, steps=1001), "at most the prior's T = 1000"),
                            (dict(n=1, dtype=torch.float16), "float32 or torch.float64")]:
        with pytest.raises(ValueError, match=message):
            sample(prior, **kwargs)
    assert torch.equal(sample(prior, 2, steps=5.0, generator=torch.Generator().manual_seed(0)),
                       sample(prior, 2, steps=5, generator=torch.Generator().manual_seed(0)))
    x0 = torch.zeros(2, *prior.shape)
    for t in (-5, 1000, 300.0, True, torch.tensor([300, 1000]), torch.tensor([1.5, 3.0])):
        with pytest.raises(ValueError, match=r"a whole timestep in \[0, 999\]"):
            denoise(prior, x0, t)  # -5 used to return x0 itself, 300.0 failed as an index
    for x, t, message in [(x0[0], 300, r"x0 must be a float batch \(B, 1, 4, 4\)"), (x0.long(), 300, "torch.int64"),
                          (x0, torch.tensor([1, 2, 3]), "3 timesteps for 2 images")]:
        with pytest.raises(ValueError, match=message):
            denoise(prior, x, t)


def test_a_diverging_run_is_reported(gaussian_problem):
    from diffprior.solvers import DivergenceError
    p = gaussian_problem
    with pytest.raises(DivergenceError, match="step size"):
        solve("scoreald", p["prior"], p["op"], p["y"], steps=200, step_size=20.0, sigma_y=p["sigma_y"])
    from diffprior.solvers import check_settings, divergence  # 20 on [-1, 1] data is no image (it passed up to 100)
    assert divergence(p["op"], torch.full_like(p["y"], 20.0), p["y"]).startswith("output values up to 20")
    assert divergence(p["op"], p["y"].clamp(-1, 1), p["y"]) is None
    with pytest.raises(ValueError, match="ddnm setting travel_length=0: must be at least 1"):
        check_settings("ddnm", {"travel_length": 0})
