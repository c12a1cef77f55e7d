import math

import pytest
import torch

from diffprior.schedule import Schedule


def test_linear_schedule_matches_ddpm():
    s = Schedule.linear()
    assert s.T == 1000 and s.betas.dtype == torch.float64
    assert float(s.betas[0]) == pytest.approx(1e-4) and float(s.betas[-1]) == pytest.approx(0.02)
    assert bool((s.abar[1:] < s.abar[:-1]).all()), "abar must decrease strictly"
    # abar_t = prod (1 - beta_s), computed independently in plain Python
    expected = math.prod(1 - (1e-4 + (0.02 - 1e-4) * i / 999) for i in range(500))
    assert float(s.abar[499]) == pytest.approx(expected, rel=1e-10)
    assert s.abar_at(-1) == 1.0


def test_cosine_schedule_is_monotone_and_ends_near_zero():
    s = Schedule.cosine(1000)
    assert bool((s.abar[1:] < s.abar[:-1]).all())
    assert float(s.abar[-1]) < 1e-4 and float(s.abar[0]) > 0.999
    assert Schedule.from_config(s.config).betas.equal(s.betas)


def test_q_sample_moments():
    s = Schedule.linear()
    x0 = torch.full((200_000, 1), 0.7, dtype=torch.float64)
    for t in (0, 300, 999):
        xt = s.q_sample(x0, t, generator=torch.Generator().manual_seed(t))
        a = s.abar_at(t)
        assert float(xt.mean()) == pytest.approx(0.7 * a ** 0.5, abs=4e-3)
        assert float(xt.var()) == pytest.approx(1 - a, rel=2e-2, abs=1e-4)


def test_q_sample_with_per_image_timesteps():
    s = Schedule.linear()
    x0, z = torch.ones(3, 2, 2), torch.zeros(3, 2, 2)
    xt = s.q_sample(x0, torch.tensor([0, 10, 999]), noise=z)
    assert torch.allclose(xt[:, 0, 0], torch.tensor([s.abar_at(t) ** 0.5 for t in (0, 10, 999)], dtype=torch.float32))


def test_respacing():
    s = Schedule.linear()
    assert s.timesteps() == list(range(999, -1, -1))
    ts = s.timesteps(100)
    assert len(ts) == 100 and ts[0] == 999 and ts[-1] == 0 and ts == sorted(ts, reverse=True)
    # guided-diffusion's space_timesteps(1000, "100") takes round(i * 999 / 99)
    assert sorted(ts) == sorted({round(i * 999 / 99) for i in range(100)})
    assert s.timesteps(10, start=500)[0] == 500 and s.timesteps(10, start=500)[-1] == 0
    assert s.timesteps(1000, start=20) == list(range(20, -1, -1))
    with pytest.raises(ValueError):
        s.timesteps(10, start=1000)


def test_bad_betas_rejected():
    with pytest.raises(ValueError):
        Schedule(torch.tensor([0.1, 1.5]))
    with pytest.raises(ValueError):
        Schedule.from_config({"kind": "quadratic"})
    for T in (-5, 0, 1, 2.5, "1000", True):  # a checkpoint's description: refused, not rounded or left to torch
        with pytest.raises(ValueError, match="the schedule's T .* is not a whole number of steps >= 2"):
            Schedule.from_config({"T": T})
