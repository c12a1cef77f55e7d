import pytest
import torch
from torch.distributions import MultivariateNormal

from diffprior.models import load_prior
from diffprior.prior import GaussianMixturePrior, GaussianPrior, NetworkPrior
from diffprior.schedule import Schedule, eps_from_v


def _random_cov(d, g):
    L = torch.randn(d, d, generator=g, dtype=torch.float64)
    return L @ L.T / d + 0.1 * torch.eye(d, dtype=torch.float64)


def test_gaussian_tweedie_equals_closed_form():
    g = torch.Generator().manual_seed(0)
    d = 6
    mean, cov = torch.randn(d, generator=g, dtype=torch.float64), _random_cov(d, g)
    prior = GaussianPrior(mean, cov)
    xt = torch.randn(5, d, generator=g, dtype=torch.float64)
    for t in (0, 250, 999):
        a = prior.schedule.abar_at(t)
        gain = a ** 0.5 * cov @ torch.linalg.inv(a * cov + (1 - a) * torch.eye(d, dtype=torch.float64))
        expected = mean + (xt - a ** 0.5 * mean) @ gain.T
        assert torch.allclose(prior.x0(xt, t), expected, atol=1e-10)
        # eps and score are consistent with x0
        eps = prior.eps(xt, t)
        assert torch.allclose(prior.x0_from_eps(xt, t, eps), expected, atol=1e-9)
        assert torch.allclose(prior.score(xt, t), -eps / (1 - a) ** 0.5)


def test_gaussian_score_is_gradient_of_log_density():
    g = torch.Generator().manual_seed(1)
    d = 4
    mean, cov = torch.randn(d, generator=g, dtype=torch.float64), _random_cov(d, g)
    prior = GaussianPrior(mean, cov)
    t = 400
    a = prior.schedule.abar_at(t)
    marginal = MultivariateNormal(a ** 0.5 * mean, a * cov + (1 - a) * torch.eye(d, dtype=torch.float64))
    x = torch.randn(3, d, generator=g, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(marginal.log_prob(x).sum(), x)
    assert torch.allclose(prior.score(x.detach(), t), grad, atol=1e-9)


def test_mixture_tweedie_against_direct_formula():
    g = torch.Generator().manual_seed(2)
    K, d = 3, 5
    w = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    means = 2 * torch.randn(K, d, generator=g, dtype=torch.float64)
    covs = torch.stack([_random_cov(d, g) for _ in range(K)])
    diag = torch.rand(K, d, generator=g, dtype=torch.float64) + 0.05
    xt = torch.randn(7, d, generator=g, dtype=torch.float64)
    eye = torch.eye(d, dtype=torch.float64)
    for covariances, prior in ((covs, GaussianMixturePrior(w, means, covs)),
                               (torch.diag_embed(diag), GaussianMixturePrior(w, means, diag))):
        for t in (10, 500, 900):
            a = prior.schedule.abar_at(t)
            logp = torch.stack([w[k].log() + MultivariateNormal(a ** 0.5 * means[k], a * covariances[k] + (1 - a) * eye).log_prob(xt)
                                for k in range(K)], 1)
            resp = torch.softmax(logp, 1)
            comp = torch.stack([means[k] + (xt - a ** 0.5 * means[k]) @ torch.linalg.solve(
                a * covariances[k] + (1 - a) * eye, a ** 0.5 * covariances[k]) for k in range(K)], 1)
            expected = (resp[:, :, None] * comp).sum(1)
            assert torch.allclose(prior.x0(xt, t), expected, atol=1e-9)


@pytest.mark.parametrize("form", ["diagonal", "full", "low-rank"])
def test_mixture_per_image_timesteps_and_shapes(form):
    g = torch.Generator().manual_seed(0)
    means = torch.randn(2, 12, generator=g)
    if form == "low-rank":
        prior = GaussianMixturePrior.low_rank(torch.ones(2), means, torch.randn(2, 12, 3, generator=g),
                                              torch.tensor([0.1, 0.2]), shape=(3, 2, 2))
    else:
        f = torch.randn(2, 12, 12, generator=g)
        covs = torch.rand(2, 12, generator=g) + 0.1 if form == "diagonal" else f @ f.transpose(1, 2) / 12
        prior = GaussianMixturePrior(torch.ones(2), means, covs, shape=(3, 2, 2))
    xt = torch.randn(4, 3, 2, 2, generator=g)
    t = torch.tensor([0, 100, 500, 999])
    out = prior.x0(xt, t)
    assert out.shape == xt.shape and out.dtype == torch.float32
    for i in range(4):
        assert torch.allclose(out[i], prior.x0(xt[i:i + 1], int(t[i]))[0], atol=1e-6)


def test_mixture_sample_moments():
    prior = GaussianMixturePrior(torch.tensor([0.3, 0.7]), torch.tensor([[-2.0, 0.0], [2.0, 1.0]]),
                                 torch.tensor([[[0.5, 0.2], [0.2, 0.3]], [[0.2, 0.0], [0.0, 0.6]]]))
    x = prior.sample(100_000, torch.Generator().manual_seed(0))
    assert torch.allclose(x.mean(0), prior.mean(), atol=0.02)
    assert torch.allclose(torch.cov(x.T), prior.covariance(), atol=0.03)


def test_posterior_of_linear_gaussian_is_exact():
    g = torch.Generator().manual_seed(3)
    d, m, s = 4, 2, 0.3
    mean, cov = torch.randn(d, generator=g, dtype=torch.float64), _random_cov(d, g)
    M = torch.randn(m, d, generator=g, dtype=torch.float64)
    y = torch.randn(m, generator=g, dtype=torch.float64)
    post = GaussianPrior(mean, cov).posterior(M, y, s)
    precision = torch.linalg.inv(cov) + M.T @ M / s ** 2
    expected_cov = torch.linalg.inv(precision)
    expected_mean = expected_cov @ (torch.linalg.solve(cov, mean) + M.T @ y / s ** 2)
    assert torch.allclose(post.covariance(), expected_cov, atol=1e-10)
    assert torch.allclose(post.mean(), expected_mean, atol=1e-10)


def test_invalid_mixtures_rejected():
    with pytest.raises(ValueError):
        GaussianMixturePrior(torch.ones(2), torch.zeros(2, 3), torch.ones(3, 3))
    with pytest.raises(ValueError):
        GaussianMixturePrior(torch.ones(1), torch.zeros(1, 2), -torch.eye(2)[None])


class _LearnedSigmaNet(torch.nn.Module):
    def forward(self, x, t):
        return torch.cat([x * 0.5, torch.full_like(x, 0.25)], 1)


def test_network_prior_splits_learned_variance():
    prior = NetworkPrior(_LearnedSigmaNet(), Schedule.linear(), (3, 4, 4), learned_variance=True)
    x = torch.randn(2, 3, 4, 4)
    eps, v = prior.predict(x, 10)
    assert torch.equal(eps, x * 0.5) and torch.all(v == 0.25)
    assert prior.eps(x, torch.tensor([3, 4])).shape == x.shape


def test_network_prior_takes_float64_images_and_restores_eager_training_mode():
    """The network computes in its weights' dtype; eps comes back in the input's (float64 solvers work).
    configure(compile=...) freezes the weights, and configure() makes them trainable again."""
    net = torch.nn.Conv2d(3, 3, 1)
    prior = NetworkPrior(_TimeFree(net), Schedule.linear(), (3, 4, 4))
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    eps, _ = prior.predict(x, 10)
    assert eps.dtype == torch.float64
    torch.testing.assert_close(eps, net(x.float()).double().detach())
    prior.configure(compile="default")  # compiles lazily, at the first call: none here
    assert not any(p.requires_grad for p in net.parameters())
    prior.configure()
    assert all(p.requires_grad for p in net.parameters())


class _TimeFree(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x, t):
        return self.net(x)


class _VelocityOracle(torch.nn.Module):
    """Returns the exact v = a eps - b x0 of a known clean image x0: a = sqrt(abar), b = sqrt(1 - abar), or
    their values at SNR / shift (`eps_from_v`)."""

    def __init__(self, x0, schedule, shift=1.0):
        super().__init__()
        self.x0, self.abar, self.shift = x0, schedule.abar, shift

    def forward(self, x, t):
        a = self.abar[t].view(-1, 1, 1, 1)
        eps = (x - a.sqrt() * self.x0) / (1 - a).sqrt()
        d = a + self.shift * (1 - a)
        return (a / d).sqrt() * eps - (self.shift * (1 - a) / d).sqrt() * self.x0


@pytest.mark.parametrize("shift", [1.0, 0.01])
@pytest.mark.parametrize("t", [0, 300, 999])
def test_v_predicting_network_prior_recovers_x0_and_eps(t, shift):
    """With prediction="v", the prior turns the network's v into eps; an exact v gives the exact x0 and eps
    at every noise level, also at t = 999 where abar is 4e-5 (computed in float64 here), for the standard v
    and for v read at SNR / 0.01."""
    schedule = Schedule.linear()
    x0 = torch.rand(2, 3, 4, 4, dtype=torch.float64) * 2 - 1
    eps = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    x_t = schedule.q_sample(x0, t, eps)
    prior = NetworkPrior(_VelocityOracle(x0, schedule, shift), schedule, (3, 4, 4), prediction="v", v_shift=shift)
    assert torch.allclose(prior.eps(x_t, t), eps, atol=1e-9)
    assert torch.allclose(prior.x0(x_t, torch.tensor([t, t])), x0, atol=1e-9)
    with pytest.raises(ValueError, match="unknown prediction"):
        NetworkPrior(_VelocityOracle(x0, schedule), schedule, (3, 4, 4), prediction="x0")
    with pytest.raises(ValueError, match="v_shift must be positive"):
        NetworkPrior(_VelocityOracle(x0, schedule), schedule, (3, 4, 4), prediction="v", v_shift=0.0)


def test_shifted_v_is_eps_at_low_noise_and_minus_x0_at_high_noise():
    """v read at SNR / 0.01 is nearly the noise itself at t = 50 and nearly -x0 at t = 999, so that an eps network
    can be fine-tuned into one without relearning the clean end."""
    schedule, g = Schedule.linear(), torch.Generator().manual_seed(0)
    x0 = torch.rand(1, 3, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    eps = torch.randn(1, 3, 4, 4, generator=g, dtype=torch.float64)
    # what the prior makes of a network answering v = eps at t = 50 and v = -x0 at t = 999
    low, high = schedule.abar[50], schedule.abar[999]
    assert (eps_from_v(schedule.q_sample(x0, 50, eps), eps, low, 0.01) - eps).abs().max() < 0.01 * eps.abs().max()
    x_t = schedule.q_sample(x0, 999, eps)
    x0_hat = (x_t - (1 - high).sqrt() * eps_from_v(x_t, -x0, high, 0.01)) / high.sqrt()
    assert (x0_hat - x0).abs().max() < 0.07 * eps.abs().max() + 0.01  # v = 0.998 (-x0) + 0.063 eps there


def test_low_rank_mixture_equals_its_full_covariance_form():
    g = torch.Generator().manual_seed(5)
    K, d, r = 3, 10, 2
    w = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    means = torch.randn(K, d, generator=g, dtype=torch.float64)
    factors = torch.randn(K, d, r, generator=g, dtype=torch.float64)
    floor = torch.tensor([0.05, 0.1, 0.02], dtype=torch.float64)
    low = GaussianMixturePrior.low_rank(w, means, factors, floor)
    covs = factors @ factors.transpose(1, 2) + floor[:, None, None] * torch.eye(d, dtype=torch.float64)
    full = GaussianMixturePrior(w, means, covs)
    assert torch.allclose(low.covariances(), covs, atol=1e-12)
    xt = 2 * torch.randn(6, d, generator=g, dtype=torch.float64)
    for t in (0, 300, 999):
        assert torch.allclose(low.x0(xt, t), full.x0(xt, t), atol=1e-9)
    x = low.sample(100_000, torch.Generator().manual_seed(0))
    assert torch.allclose(torch.cov(x.T), low.covariance(), atol=0.05)


@pytest.mark.parametrize("bad,error,message", [
    (None, TypeError, r"takes a model's name \(gmm-demo, faces64, .*\) or a checkpoint's path; got NoneType"),
    ("", FileNotFoundError, "no prior called '': not a named model"),  # not the current folder
])
def test_load_prior_says_what_it_takes(bad, error, message):
    with pytest.raises(error, match=message):
        load_prior(bad)
