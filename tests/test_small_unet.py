"""SmallUNet: shapes, timestep conditioning, size of the default config, checkpoint round trip, widening."""

import re

import pytest
import torch

from diffprior import load_prior
from diffprior.checkpoints import CheckpointError, save_checkpoint
from diffprior.networks import build_network
from diffprior.networks.small import CONFIGS, SmallUNet, network_config, widen
from diffprior.schedule import Schedule



def randomised(net: SmallUNet, seed: int = 0) -> SmallUNet:
    """Give every weight, the zero-initialised ones included, a small random value."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return net.eval()


def tiny(**kw) -> SmallUNet:
    return SmallUNet(**{**CONFIGS["tiny"], **kw})


@pytest.mark.parametrize("size", [16, 32])
def test_shapes(size):
    net = randomised(tiny())
    x = torch.randn(2, 3, size, size)
    assert net(x, torch.tensor([3, 700])).shape == x.shape


def test_patch_stem_is_a_unet_on_the_pixel_unshuffled_image():
    """patch=2 is exactly pixel_shuffle(UNet_12ch(pixel_unshuffle(x))): the same weights loaded into a
    12-channel network at half the size give the same output; sizes must divide by patch * 2 ** (levels-1)."""
    F = torch.nn.functional
    net = randomised(tiny(patch=2, image_size=32))
    inner = tiny(channels=12, image_size=16).eval()
    inner.load_state_dict(net.state_dict(), strict=True)
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([3, 700])
    assert torch.allclose(net(x, t), F.pixel_shuffle(inner(F.pixel_unshuffle(x, 2), t), 2), atol=1e-6)
    with pytest.raises(ValueError, match="divisible by 4"):
        net(torch.randn(1, 3, 18, 18), torch.tensor([1]))


def test_rejects_sizes_the_levels_cannot_halve():
    with pytest.raises(ValueError, match="divisible"):
        tiny()(torch.randn(1, 3, 15, 15), torch.tensor([1]))


def test_starts_as_zero_predictor():
    """Zero-initialised output and residual branches: the untrained network predicts eps = 0."""
    out = tiny()(torch.randn(2, 3, 16, 16), torch.tensor([5, 500]))
    assert torch.count_nonzero(out) == 0


def test_timestep_conditioning_changes_the_output():
    net = randomised(tiny(dropout=0.0))
    x = torch.randn(1, 3, 16, 16).expand(2, -1, -1, -1)
    with torch.no_grad():
        same = net(x, torch.tensor([10, 10]))
        diff = net(x, torch.tensor([10, 900]))
    assert torch.equal(same[0], same[1])
    assert (diff[0] - diff[1]).abs().max() > 1e-3


def test_default_config_size():
    net = SmallUNet(**CONFIGS["default"])
    n = sum(p.numel() for p in net.parameters())
    assert 5.0e6 < n < 6.5e6  # 5.8M: 12 MB of weights in float16
    assert 19.0e6 < sum(p.numel() for p in SmallUNet(**CONFIGS["large"]).parameters()) < 19.8e6
    assert 1e5 < sum(p.numel() for p in tiny().parameters()) < 1e6


def test_config_is_complete_and_json_friendly():
    cfg = network_config("tiny")
    assert SmallUNet(**cfg).config == cfg
    assert all(not isinstance(v, tuple) for v in cfg.values())
    with pytest.raises(TypeError, match="unknown"):
        SmallUNet.full_config(width=3)
    with pytest.raises(ValueError, match="unknown SmallUNet config"):
        network_config("huge")


def checkpoint_config(network: dict) -> dict:
    return {"architecture": "small-unet", "network": network, "schedule": Schedule.linear().config,
            "image_size": 16, "channels": 3, "learned_variance": False}


def test_checkpoint_round_trip(tmp_path):
    net = randomised(build_network("small-unet", **network_config("tiny")))
    path = save_checkpoint(net, checkpoint_config(net.config), tmp_path / "m.safetensors")
    prior = load_prior(path)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([4, 400])
    with torch.no_grad():
        assert torch.equal(prior.eps(x, t), net(x, t))
    assert prior.shape == (3, 16, 16)


def test_checkpoint_prediction_round_trip(tmp_path):
    """A checkpoint's "prediction" reaches the prior (absent: eps); an unknown one is a CheckpointError."""
    net = randomised(tiny())
    path = save_checkpoint(net, {**checkpoint_config(net.config), "prediction": "v"}, tmp_path / "v.safetensors")
    prior = load_prior(path)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([4, 400])
    a = Schedule.linear().abar[t].float().view(-1, 1, 1, 1)
    with torch.no_grad():
        assert prior.prediction == "v"
        assert torch.allclose(prior.eps(x, t), (1 - a).sqrt() * x + a.sqrt() * net(x, t), atol=1e-6)
    assert load_prior(save_checkpoint(net, checkpoint_config(net.config), tmp_path / "e.safetensors")).prediction == "eps"
    path = save_checkpoint(net, {**checkpoint_config(net.config), "prediction": "x0"}, tmp_path / "x.safetensors")
    with pytest.raises(CheckpointError, match="prediction"):
        load_prior(path)


def test_strict_load_fails_on_the_wrong_network(tmp_path):
    net = randomised(tiny())
    wrong = {**net.config, "base": 32}  # the weights do not fit this description
    path = save_checkpoint(net, checkpoint_config(wrong), tmp_path / "m.safetensors")
    with pytest.raises(CheckpointError, match="wrong shape"):
        load_prior(path)
    fewer = {**net.config, "blocks": 2}
    path = save_checkpoint(net, checkpoint_config(fewer), tmp_path / "n.safetensors")
    with pytest.raises(CheckpointError, match="missing"):
        load_prior(path)


@pytest.mark.parametrize("change, message", [
    ({"channels": 1}, r"does not take \(1, 1, 16, 16\) images"),  # the network takes 3 channels
    ({"channels": 4}, r"channels 4: the images are grey \(1\) or RGB \(3\)"),
    ({"learned_variance": True}, r"to \(1, 3, 16, 16\), not \(1, 6, 16, 16\)"),
    ({"learned_variance": "false"}, "not true or false"),  # bool("false") would be True
    ({"v_shift": float("inf"), "prediction": "v"}, "v_shift inf"),
    ({"schedule": "linear"}, "schedule"),
    ({"schedule": {"kind": "linear", "T": "abc"}}, "abc"),
    ({"image_size": 32}, "differs from the network's 16"),
    ({"image_size": 16.7}, "image_size 16.7 is not a whole number"),  # int() would read 16
])
def test_descriptions_that_do_not_fit_the_network_are_refused(tmp_path, change, message):
    """Every claim of the JSON is checked at load time, never left to fail (or run wrong) when sampling."""
    net = tiny()
    path = save_checkpoint(net, {**checkpoint_config(net.config), **change}, tmp_path / "m.safetensors")
    with pytest.raises(CheckpointError, match=message):
        load_prior(path)


@pytest.mark.parametrize("setting, message", [
    ({"head_channels": 0}, "head_channels 0 is not a whole number >= 1"),  # was a ZeroDivisionError
    ({"patch": 0}, "patch 0 is not a whole number >= 1"),
    ({"base": "abc"}, "base 'abc' is not a whole number >= 1"),
    ({"mult": []}, r"mult \[\] is not a list of whole numbers"),
    ({"attn": ["x"]}, "attn 'x' is not a whole number"),
    ({"dropout": 1.5}, r"dropout 1.5 is not a number in \[0, 1\)"),
])
def test_network_settings_are_checked_naming_them(tmp_path, setting, message):
    net = tiny()
    config = checkpoint_config(net.config)
    path = save_checkpoint(net, {**config, "network": {**config["network"], **setting}}, tmp_path / "m.safetensors")
    with pytest.raises(CheckpointError, match=f"m.json is not a valid checkpoint description \\({message}"):
        load_prior(path)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_weights_that_are_not_finite_are_refused_naming_the_tensor(tmp_path, value):
    """A checkpoint saved after training diverged loads no more: later errors would blame the image."""
    net = randomised(tiny())
    with torch.no_grad():
        net.out[-1].bias[1] = value
    path = save_checkpoint(net, checkpoint_config(net.config), tmp_path / "m.safetensors")
    with pytest.raises(CheckpointError, match=r"m.safetensors holds NaN or infinite weights \(out.2.bias\)"):
        load_prior(path)


def test_a_config_beside_a_described_checkpoint_is_refused(tmp_path):
    """--config names a raw state dict's architecture; a checkpoint with its description would ignore it."""
    net = tiny()
    path = save_checkpoint(net, checkpoint_config(net.config), tmp_path / "m.safetensors")
    with pytest.raises(ValueError, match="m.safetensors is diffprior's format, described by m.json: drop the config"):
        load_prior(path, config="ffhq256")


def test_a_large_claimed_size_is_checked_without_running_the_network(tmp_path, monkeypatch):
    """Up to 256 px the load-time check runs the network once; a larger claim is checked on the meta device
    (a forward pass at 4096 x 4096 would take many gigabytes), with the same errors."""
    net = tiny(image_size=4096)
    ran = []
    monkeypatch.setattr(SmallUNet, "forward", lambda self, x, t, f=SmallUNet.forward: ran.append(x.device.type) or f(self, x, t))
    config = {**checkpoint_config(net.config), "image_size": 4096}
    assert load_prior(save_checkpoint(net, config, tmp_path / "m.safetensors")).shape == (3, 4096, 4096)
    assert ran == ["meta"]
    path = save_checkpoint(net, {**config, "channels": 1}, tmp_path / "c.safetensors")
    with pytest.raises(CheckpointError, match=r"does not take \(1, 1, 4096, 4096\) images"):
        load_prior(path)
    small = tiny()
    ran.clear()
    load_prior(save_checkpoint(small, checkpoint_config(small.config), tmp_path / "s.safetensors"))
    assert ran == ["cpu"]


def test_running_out_of_memory_at_load_is_not_blamed_on_the_description(tmp_path, monkeypatch):
    net = tiny()
    path = save_checkpoint(net, checkpoint_config(net.config), tmp_path / "m.safetensors")

    def out_of_memory(self, x, t):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(SmallUNet, "forward", out_of_memory)
    with pytest.raises(torch.OutOfMemoryError):
        load_prior(path)


@pytest.mark.parametrize("factor", [2, 3])
def test_widening_keeps_the_function(factor):
    """A network widened by an integer factor (Net2WiderNet) computes what it did, at every timestep, with
    factor x the channels at every level and factor x the attention heads."""
    net = randomised(tiny(base=32, head_channels=16))
    wide = widen(net, factor).eval()
    assert wide.config == {**net.config, "base": 32 * factor}
    assert wide.down[0].res.conv1.out_channels == factor * net.down[0].res.conv1.out_channels
    assert wide.mid[0].attn.heads == factor * net.mid[0].attn.heads
    x, t = torch.randn(4, 3, 16, 16), torch.tensor([0, 50, 600, 999])
    with torch.no_grad():
        out = net(x, t)
        assert torch.allclose(wide(x, t), out, atol=1e-5 * out.abs().max())


def test_widened_copies_learn_apart():
    """The copies of a channel compute the same values but feed the next layer through different shares of
    the old weights, so their gradients differ and training moves them apart (copies that stayed equal would
    add no capacity)."""
    wide = widen(randomised(tiny(base=32, head_channels=16)), 2).train()
    conv = wide.down[0].res.conv1
    assert not torch.equal(conv.weight[0], conv.weight[1])  # the input copies are split differently too
    x, t = torch.randn(4, 3, 16, 16), torch.tensor([10, 200, 500, 900])
    wide(x, t).square().mean().backward()
    grad = wide.down[0].res.conv2.weight.grad  # rows: the copies 2c, 2c + 1 of output channel c
    assert not torch.allclose(grad[0], grad[1])


def test_widening_refuses_what_it_cannot_keep_exact():
    with pytest.raises(ValueError, match="positive integer"):
        widen(tiny(base=32), 0)
    with pytest.raises(ValueError, match="GroupNorm groups would change"):
        widen(tiny(), 2)  # 16 channels in 16 groups would become 32 in 32
    with pytest.raises(ValueError, match="pixel-unshuffle"):
        widen(tiny(base=32, patch=2, image_size=32), 2)


def test_widening_the_shipped_face_model():
    """faces64 widened 2x (23M parameters) predicts what faces64 predicts."""
    prior = load_prior("faces64")
    wide = widen(prior.net, 2).eval()
    x, t = torch.randn(2, 3, 64, 64), torch.tensor([100, 700])
    with torch.no_grad():
        out = prior.net(x, t)
        assert torch.allclose(wide(x, t), out, atol=1e-5 * out.abs().max())


@pytest.mark.parametrize("description,reason", [
    ('{"image_size": 16}', "(it has no 'architecture')"),
    ("[16]", "(it is not a JSON object)"),
    ('{"image_size": 16,', "(not valid JSON: Expecting property name"),
    # two reasons that were Python's words: 'NoneType' object has no attribute 'get'; could not convert ...
    ('{"image_size": 16, "architecture": "small-unet", "network": null}',
     "(network None is not an object of the network's settings)"),
    ('{"image_size": 16, "architecture": "small-unet", "v_shift": "abc"}', "(v_shift 'abc' is not a positive number)"),
])
def test_a_broken_description_names_what_is_wrong(tmp_path, description, reason):
    path = save_checkpoint(randomised(tiny()), checkpoint_config(tiny().config), tmp_path / "m.safetensors")
    path.with_suffix(".json").write_text(description)
    with pytest.raises(CheckpointError, match=re.escape(f"m.json is not a valid checkpoint description {reason}")):
        load_prior(path)
