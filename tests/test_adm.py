"""The guided-diffusion (ADM) UNet: sizes, checkpoint layout, strict loading and numerical parity.

Parity fixture (tests/data/adm_reference_small.safetensors). It was made with the reference implementation,
openai/guided-diffusion at commit 22e0df8183507e13a7813f8d38d51b072ca1e67c, `guided_diffusion.script_util.create_model`
called with each of the two `FIXTURE_CONFIGS` below (channel_mult and attention_resolutions written as comma
strings). Every tensor of the reference model's state dict was replaced by `seeded_state(state, seed)` (seed 1
for "legacy", 2 for "new"), the model was put in eval mode and run in float32 on the CPU on the stored input
`x` (torch.randn of shape (2, 3, 32, 32) from a generator seeded with 0) at the stored timesteps `t` = [17, 803].
The file holds x, t, each config's output (`<name>.output`) and, as `<name>.probe`, the first value of every
generated tensor in sorted key order, which tells a change of the random generator apart from a change of the
network. The reference code itself is not part of this project and is not needed to run these tests.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from diffprior import NetworkPrior, load_prior
from diffprior.checkpoints import CheckpointError, read_state_dict
from diffprior.checkpoints.guided_diffusion import load_guided_diffusion
from diffprior.networks import build_network
from diffprior.networks.adm import ADMUNet, AttentionBlock, adm_config, build_adm

FIXTURE = Path(__file__).parent / "data" / "adm_reference_small.safetensors"

FIXTURE_CONFIGS = {
    # a miniature of the DPS FFHQ model: legacy attention order, learned variance, scale-shift, ResBlock up/down
    "legacy": dict(image_size=32, num_channels=32, num_res_blocks=1, channel_mult=(1, 2, 2),
                   attention_resolutions="16,8", num_head_channels=16, learn_sigma=True, use_scale_shift_norm=True,
                   resblock_updown=True, use_new_attention_order=False),
    # the other branches: new attention order, heads by count, additive embedding, conv up/downsampling
    "new": dict(image_size=32, num_channels=32, num_res_blocks=2, channel_mult=(1, 2, 2),
                attention_resolutions="16,8", num_heads=4, num_heads_upsample=2, learn_sigma=False,
                use_scale_shift_norm=False, resblock_updown=False, use_new_attention_order=True),
}
FIXTURE_SEEDS = {"legacy": 1, "new": 2}


def seeded_state(state: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """Deterministic weights for every tensor of `state`, drawn in sorted key order from one generator:
    matrices and kernels randn / sqrt(fan_in), 1-D weights (norm scales) 1 + 0.1 randn, biases 0.1 randn."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key in sorted(state):
        shape = state[key].shape
        z = torch.randn(shape, generator=g)
        if len(shape) >= 2:
            out[key] = z / state[key][0].numel() ** 0.5
        elif key.endswith("weight"):
            out[key] = 1 + 0.1 * z
        else:
            out[key] = 0.1 * z
    return out


def seeded_net(name: str = "legacy", **changes) -> ADMUNet:
    net = ADMUNet(**{**FIXTURE_CONFIGS[name], **changes}).eval()
    net.load_state_dict(seeded_state(net.state_dict(), FIXTURE_SEEDS[name]))
    return net


def inputs(batch: int = 2, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(batch, 3, size, size, generator=g), torch.tensor([17, 803][:batch])


def n_params(net) -> tuple[int, int]:
    state = net.state_dict()
    return sum(v.numel() for v in state.values()), len(state)


# -- sizes and layout ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, params, tensors", [("ffhq256", 93_563_910, 362),
                                                   ("imagenet256-uncond", 552_814_086, 566)])
def test_builtin_sizes(name, params, tensors):
    assert n_params(build_adm(name, device="meta")) == (params, tensors)


def test_ffhq256_layout():
    net = build_adm("ffhq256", device="meta")
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert shapes["input_blocks.0.0.weight"] == (128, 3, 3, 3)
    assert shapes["time_embed.0.weight"] == (512, 128)
    assert shapes["time_embed.2.weight"] == (512, 512)
    assert shapes["out.0.weight"] == (128,)  # GroupNorm
    assert shapes["out.2.weight"] == (6, 128, 3, 3)
    assert shapes["input_blocks.1.0.in_layers.0.weight"] == (128,)
    assert shapes["input_blocks.1.0.in_layers.2.weight"] == (128, 128, 3, 3)
    assert shapes["input_blocks.1.0.emb_layers.1.weight"] == (256, 512)  # 2 * C_out for scale-shift
    assert shapes["input_blocks.1.0.out_layers.0.weight"] == (128,)
    assert shapes["input_blocks.1.0.out_layers.3.weight"] == (128, 128, 3, 3)
    assert shapes["input_blocks.5.0.skip_connection.weight"] == (256, 128, 1, 1)
    assert "input_blocks.1.0.skip_connection.weight" not in shapes  # only where the channels change
    assert shapes["input_blocks.9.1.qkv.weight"] == (1536, 512, 1)
    assert shapes["input_blocks.9.1.proj_out.weight"] == (512, 512, 1)
    attention = sorted(k[: -len(".qkv.weight")] for k in shapes if k.endswith(".qkv.weight"))
    assert attention == ["input_blocks.9.1", "middle_block.1", "output_blocks.2.1", "output_blocks.3.1"]
    assert all(net.get_submodule(a).heads == 8 for a in attention)  # 512 channels / 64 per head
    assert [i for i, b in enumerate(net.input_blocks) if getattr(b[0], "resample", None) == "down"] == [2, 4, 6, 8, 10]
    ups = [f"{i}.{j}" for i, b in enumerate(net.output_blocks) for j, m in enumerate(b)
           if getattr(m, "resample", None) == "up"]
    assert ups == ["1.1", "3.2", "5.1", "7.1", "9.1"]
    assert len(net.input_blocks) == 12 and len(net.output_blocks) == 12 and len(net.middle_block) == 3


def test_imagenet256_layout():
    net = build_adm("imagenet256-uncond", device="meta")
    blocks = [(name, m) for name, m in net.named_modules() if isinstance(m, AttentionBlock)]
    assert len(blocks) == 16  # at 32x32, 16x16 and 8x8: 2 per encoder level, 1 in the middle, 3 per decoder level
    assert [n for n, _ in blocks][:2] == ["input_blocks.10.1", "input_blocks.11.1"]
    assert net.input_blocks[10][1].heads == 8 and net.middle_block[1].heads == 16  # 512 and 1024 channels
    assert not hasattr(net, "label_emb")


# -- numerical parity with the reference implementation ---------------------------------------------------------
@pytest.mark.parametrize("name", sorted(FIXTURE_CONFIGS))
def test_reference_parity(name):
    ref = load_file(str(FIXTURE))
    net = ADMUNet(**FIXTURE_CONFIGS[name]).eval()
    state = seeded_state(net.state_dict(), FIXTURE_SEEDS[name])
    probe = torch.stack([state[k].flatten()[0] for k in sorted(state)])
    assert torch.equal(probe, ref[f"{name}.probe"]), "torch's random generator changed: regenerate the fixture"
    net.load_state_dict(state)
    with torch.no_grad():
        out = net(ref["x"], ref["t"])
    assert out.shape == ref[f"{name}.output"].shape
    torch.testing.assert_close(out, ref[f"{name}.output"], atol=1e-5, rtol=0)


def test_timestep_and_input_matter():
    net = seeded_net()
    x, t = inputs()
    with torch.no_grad():
        out = net(x, t)
        assert (net(x, t.flip(0)) - out).abs().max() > 1e-3
        assert (net(x.flip(0), t) - out).abs().max() > 1e-3


def test_low_precision_runs_in_the_parameters_dtype():
    net = seeded_net()
    x, t = inputs()
    with torch.no_grad():
        ref = net(x, t)
        low = net.to(torch.bfloat16)(x, t)
    assert low.dtype == torch.float32
    assert (low - ref).abs().max() < 0.1 * ref.abs().max()


def test_class_conditional():
    net = seeded_net(class_cond=True)
    assert tuple(net.label_emb.weight.shape) == (1000, 128)
    x, t = inputs()
    with torch.no_grad():
        a = net(x, t, torch.tensor([1, 2]))
        b = net(x, t, torch.tensor([3, 2]))
    assert (a[0] - b[0]).abs().max() > 1e-4 and torch.allclose(a[1], b[1])
    with pytest.raises(ValueError, match="class labels"):
        net(x, t)


# -- configs -----------------------------------------------------------------------------------------------------
DPS_YAML = """\
image_size: 256
num_channels: 128
num_res_blocks: 1
channel_mult: ""
learn_sigma: True
class_cond: False
use_checkpoint: False
attention_resolutions: 16
num_heads: 4
num_head_channels: 64
num_heads_upsample: -1
use_scale_shift_norm: True
dropout: 0.0
resblock_updown: True
use_fp16: False
use_new_attention_order: False

model_path: models/ffhq_10m.pt
"""


def test_dps_yaml_config_matches_builtin(tmp_path):
    path = tmp_path / "model_config.yaml"
    path.write_text(DPS_YAML)
    cfg = adm_config(path)
    assert "model_path" not in cfg and cfg["attention_resolutions"] == 16
    ours, builtin = build_adm(path, device="meta").state_dict(), build_adm("ffhq256", device="meta").state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in builtin.items()}


def test_config_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown settings num_chanels"):
        adm_config({**FIXTURE_CONFIGS["legacy"], "num_chanels": 64})
    with pytest.raises(ValueError, match="missing num_res_blocks"):
        adm_config({"image_size": 32, "num_channels": 32})
    with pytest.raises(ValueError, match="ffhq-256"):
        adm_config("ffhq-256")
    with pytest.raises(ValueError, match="no default channel_mult"):
        build_adm({"image_size": 48, "num_channels": 32, "num_res_blocks": 1}, device="meta")
    assert isinstance(build_network("adm", **FIXTURE_CONFIGS["legacy"]), ADMUNet)


def test_a_config_file_that_is_no_yaml_is_named(tmp_path):
    path = tmp_path / "model_config.yaml"
    path.write_text("image_size: [1, 2\n num_channels: {")
    with pytest.raises(ValueError, match="model_config.yaml is not a YAML file of settings"):
        adm_config(path)


@pytest.mark.parametrize("setting, message", [
    ({"attention_resolutions": "x,y"}, "attention_resolutions 'x,y' is not a list of whole numbers"),
    ({"channel_mult": "1,0"}, "channel_mult '1,0' is not a list of whole numbers"),
    ({"num_head_channels": 0}, "num_head_channels 0 is neither -1"),  # was a ZeroDivisionError
])
def test_settings_that_build_no_network_name_the_file_and_setting(tmp_path, setting, message):
    torch.save(seeded_net().state_dict(), tmp_path / "small.pt")
    path = write_yaml(tmp_path, {**FIXTURE_CONFIGS["legacy"], **setting})
    with pytest.raises(CheckpointError, match=f"model_config.yaml: settings do not build an ADM network \\({message}"):
        load_prior(tmp_path / "small.pt", config=str(path))


# -- checkpoints -------------------------------------------------------------------------------------------------
def write_yaml(tmp_path: Path, config: dict) -> Path:
    cfg = {k: ",".join(map(str, v)) if isinstance(v, tuple) else v for k, v in config.items()}
    path = tmp_path / "model_config.yaml"
    path.write_text(yaml.safe_dump({**cfg, "model_path": "models/small.pt"}))
    return path


def test_strict_load_reproduces_outputs(tmp_path):
    net = seeded_net()
    x, t = inputs()
    with torch.no_grad():
        expected = net(x, t)
    path = tmp_path / "small.pt"
    torch.save(net.state_dict(), path)
    prior = load_prior(path, config=str(write_yaml(tmp_path, FIXTURE_CONFIGS["legacy"])))
    assert isinstance(prior, NetworkPrior) and prior.learned_variance and prior.shape == (3, 32, 32)
    assert prior.config["architecture"] == "adm" and prior.config["schedule"]["kind"] == "linear"
    assert prior.schedule.T == 1000 and not prior.net.training
    with torch.no_grad():
        eps, v = prior.predict(x, t)
        assert torch.equal(prior.net(x, t), expected)
    assert torch.equal(eps, expected[:, :3]) and torch.equal(v, expected[:, 3:])
    # the description is enough to rebuild the network (diffprior's own checkpoint format)
    assert n_params(build_network("adm", **prior.config["network"])) == n_params(net)


@pytest.mark.parametrize("form", ["wrapped", "module-prefix", "safetensors"])
def test_other_state_dict_forms(tmp_path, form):
    net = seeded_net()
    state = net.state_dict()
    if form == "safetensors":
        path = tmp_path / "small.safetensors"
        save_file(state, str(path))
    else:
        path = tmp_path / "small.pt"
        torch.save({"state_dict": state, "step": 10} if form == "wrapped"
                   else {f"module.{k}": v for k, v in state.items()}, path)
    loaded = load_guided_diffusion(path, FIXTURE_CONFIGS["legacy"]).net.state_dict()
    assert list(loaded) == list(state) and all(torch.equal(loaded[k], state[k]) for k in state)


def broken(kind: str) -> tuple[dict, list[str]]:
    """A state dict that does not fit the legacy fixture config, and the names the error must give."""
    state = seeded_net().state_dict()
    if kind == "missing":
        del state["out.2.bias"], state["input_blocks.3.1.qkv.weight"]
        return state, ["missing", "out.2.bias", "input_blocks.3.1.qkv.weight"]
    if kind == "unexpected":
        state["label_emb.weight"] = torch.zeros(1000, 128)
        return state, ["unexpected", "label_emb.weight"]
    if kind == "shape":
        state["input_blocks.0.0.weight"] = torch.zeros(32, 1, 3, 3)
        return state, ["wrong shape", "input_blocks.0.0.weight", "(32, 1, 3, 3)", "(32, 3, 3, 3)"]
    # another architecture: two ResBlocks per level, conv downsampling, no scale-shift
    state = seeded_net("new").state_dict()
    return state, ["missing", "input_blocks.3.0.skip_connection.weight", "unexpected", "input_blocks.3.0.op.weight",
                   "wrong shape", "input_blocks.1.0.emb_layers.1.weight: checkpoint (32, 128) vs network (64, 128)"]


@pytest.mark.parametrize("kind", ["missing", "unexpected", "shape", "other-config"])
def test_wrong_state_dict_fails_loudly(tmp_path, kind):
    state, names = broken(kind)
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as err:
        load_prior(path, config=str(write_yaml(tmp_path, FIXTURE_CONFIGS["legacy"])))
    for name in names:
        assert name in str(err.value)


def test_unreadable_checkpoints(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        read_state_dict(junk)
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="does not hold a state dict"):
        read_state_dict(tmp_path / "list.pt")
    with pytest.raises(FileNotFoundError):
        read_state_dict(tmp_path / "absent.pt")


def test_ffhq256_checkpoint_of_another_size_fails(tmp_path):
    path = tmp_path / "small.pt"
    torch.save(seeded_net().state_dict(), path)
    with pytest.raises(CheckpointError) as err:
        load_prior(path, config="ffhq256")
    assert "input_blocks.0.0.weight: checkpoint (32, 3, 3, 3) vs network (128, 3, 3, 3)" in str(err.value)
