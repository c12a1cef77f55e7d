import pytest
import torch

from diffprior.uncertainty import calibration, calibration_figure, posterior_samples, std_image


def test_calibration_of_exact_samples_is_perfect():
    """Draws x ~ N(m, s^2) per pixel, scored with the true mean and std: error matches std per bin."""
    g = torch.Generator().manual_seed(0)
    std = torch.rand(3, 64, 64, generator=g) * 0.5 + 0.05
    mean = torch.zeros(3, 64, 64)
    truth = mean + std * torch.randn(3, 64, 64, generator=g)
    cal = calibration(mean, std, truth)
    assert abs(cal["coverage90"] - 0.90) < 0.02
    for s, e in zip(cal["std_rms"], cal["error_rms"]):
        assert abs(e - s) < 0.1 * s
    over = calibration(mean, std * 3, truth)  # an over-dispersed sampler covers too much
    assert over["coverage90"] > 0.99


def test_posterior_samples_of_the_exact_gaussian_problem(gaussian_problem, tmp_path):
    p = gaussian_problem
    x = posterior_samples("dps", p["prior"], p["op"], p["y"], 400, steps=100, scale=0.032, ref_size=None,
                          generator=torch.Generator().manual_seed(0), batch=64)  # 7 calls: 6 of 64, one of 16
    assert x.shape == (400, 1, 4, 4)
    std = x.std(0)
    post_std = p["posterior"].covariance().diagonal().sqrt().reshape(1, 4, 4)
    observed = p["op"].mask[0].bool().expand(1, 4, 4)
    # observed pixels are pinned by y, missing ones keep the prior's spread
    assert float(std[observed].mean()) < float(std[~observed].mean())
    assert float((std - post_std).abs().mean()) < 0.35 * float(post_std.mean())
    assert 0.8 < float(std[~observed].mean() / post_std[~observed].mean()) < 1.2  # missing: the posterior's spread
    cal = calibration(x.mean(0), std, p["x"][0])
    assert calibration_figure(cal, tmp_path / "cal.png").is_file()


def test_posterior_samples_refuse_what_has_no_spread_or_is_no_count(gaussian_problem):
    p = gaussian_problem
    for k, y, message in [(1, p["y"], "at least 2 samples"), (2.5, p["y"], "k=2.5: the number of samples"),
                          (True, p["y"], "k=True"),
                          (2, p["y"][0].expand(3, 4, 4), r"a batch of 1 \(1, ...\), got shape \(3, 4, 4\)")]:
        with pytest.raises(ValueError, match=message):
            posterior_samples("dps", p["prior"], p["op"], y, k)
    with pytest.raises(ValueError, match="tv"):
        posterior_samples("tv", p["prior"], p["op"], p["y"], 2)


def test_calibration_and_std_image_refuse_shapes_that_do_not_fit():
    x = torch.zeros(3, 4, 4)
    with pytest.raises(ValueError, match="of one shape, got"):
        calibration(x, x[:1], x)
    with pytest.raises(ValueError, match="bins=0"):
        calibration(x, x, x, bins=0)
    with pytest.raises(ValueError, match=r"\(C, H, W\), got shape \(1, 3, 4, 4\)"):
        std_image(x[None])
