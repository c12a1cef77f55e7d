"""The diffusers UNet2DModel adapter: exact outputs, the schedule, strict loading, clear errors."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

diffusers = pytest.importorskip("diffusers")

from diffprior import load_prior  # noqa: E402
from diffprior.checkpoints import CheckpointError  # noqa: E402
from diffprior.checkpoints.diffusers import schedule_from_diffusers  # noqa: E402

WEIGHTS = "diffusion_pytorch_model.safetensors"


def small_unet(out_channels: int = 3) -> "diffusers.UNet2DModel":
    torch.manual_seed(0)
    return diffusers.UNet2DModel(
        sample_size=16, in_channels=3, out_channels=out_channels, layers_per_block=1,
        block_out_channels=(16, 32), norm_num_groups=8,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    ).eval()


def save_model(folder, unet=None, **scheduler):
    unet = unet or small_unet()
    unet.save_pretrained(folder, safe_serialization=True)
    sched = diffusers.DDPMScheduler(**scheduler)
    sched.save_pretrained(folder)
    return unet, sched


def test_eps_and_schedule_match_diffusers(tmp_path):
    unet, sched = save_model(tmp_path, num_train_timesteps=500, beta_start=2e-4, beta_end=0.03)
    prior = load_prior(tmp_path)
    assert prior.shape == (3, 16, 16) and not prior.learned_variance
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([3, 420])
    with torch.no_grad():
        assert torch.equal(prior.eps(x, t), unet(x, t).sample)
        assert torch.equal(prior.eps(x, 7), unet(x, torch.tensor([7, 7])).sample)
    assert prior.schedule.T == 500
    torch.testing.assert_close(prior.schedule.betas.float(), sched.betas)


@pytest.mark.parametrize("kind", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_beta_schedules(kind):
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule=kind, beta_start=1e-4, beta_end=0.02)
    ours = schedule_from_diffusers(dict(sched.config))
    torch.testing.assert_close(ours.betas.float(), sched.betas.float())


def test_pipeline_layout_and_default_schedule(tmp_path):
    unet = small_unet()
    unet.save_pretrained(tmp_path / "unet")  # no scheduler at all: DDPM's linear 1e-4..0.02, T = 1000
    prior = load_prior(tmp_path)
    torch.testing.assert_close(prior.schedule.betas, torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64))
    diffusers.DDPMScheduler(num_train_timesteps=200).save_pretrained(tmp_path / "scheduler")
    assert load_prior(tmp_path).schedule.T == 200


def test_bin_weights(tmp_path):
    unet = small_unet()
    unet.save_pretrained(tmp_path, safe_serialization=False)
    assert (tmp_path / "diffusion_pytorch_model.bin").is_file()
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(load_prior(tmp_path).eps(x, 10), unet(x, torch.tensor([10])).sample)


def test_legacy_attention_names(tmp_path):
    """Checkpoints converted for diffusers < 0.14 (google/ddpm-*) name attention projections query/key/value/
    proj_attn; they load into the current layout."""
    unet, _ = save_model(tmp_path)
    new_to_old = {".to_q.": ".query.", ".to_k.": ".key.", ".to_v.": ".value.", ".to_out.0.": ".proj_attn."}
    state = {}
    for k, v in load_file(tmp_path / WEIGHTS).items():
        for new, old in new_to_old.items():
            k = k.replace(new, old)
        state[k] = v
    assert any(".proj_attn." in k for k in state)
    save_file(state, tmp_path / WEIGHTS)
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(load_prior(tmp_path).eps(x, 9), unet(x, torch.tensor([9])).sample)


def test_missing_tensor_fails_loudly(tmp_path):
    save_model(tmp_path)
    state = load_file(tmp_path / WEIGHTS)
    dropped = sorted(state)[0]
    del state[dropped]
    save_file(state, tmp_path / WEIGHTS)
    with pytest.raises(CheckpointError, match="missing") as err:
        load_prior(tmp_path)
    assert dropped in str(err.value)


def test_wrong_shape_fails_loudly(tmp_path):
    save_model(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["block_out_channels"] = [16, 64]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="wrong shape"):
        load_prior(tmp_path)


def test_v_prediction_matches_the_diffusers_scheduler(tmp_path):
    """A v_prediction model loads as a v prior: its x0 estimate is the one diffusers' own DDPMScheduler
    computes from the same network output (pred_original_sample, unclipped)."""
    unet, sched = save_model(tmp_path, prediction_type="v_prediction", clip_sample=False)
    prior = load_prior(tmp_path)
    assert prior.prediction == "v"
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        for t in (5, 600, 999):
            expected = sched.step(unet(x, torch.tensor([t])).sample, t, x).pred_original_sample
            torch.testing.assert_close(prior.net(x, torch.tensor([t])), unet(x, torch.tensor([t])).sample)
            torch.testing.assert_close(prior.x0(x, t), expected, atol=1e-4, rtol=1e-4)


def test_sample_prediction_fails_clearly(tmp_path):
    save_model(tmp_path, prediction_type="sample")
    with pytest.raises(ValueError, match="prediction_type.*sample.*'epsilon' or 'v_prediction'"):
        load_prior(tmp_path)


def test_learned_range_variance(tmp_path):
    unet, _ = save_model(tmp_path, unet=small_unet(out_channels=6), variance_type="learned_range")
    prior = load_prior(tmp_path)
    assert prior.learned_variance
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        eps, v = prior.predict(x, 5)
        assert torch.equal(eps, unet(x, torch.tensor([5])).sample[:, :3])
        assert v.shape == eps.shape


def test_missing_diffusers_says_how_to_install(tmp_path, monkeypatch):
    import sys
    save_model(tmp_path)
    monkeypatch.setitem(sys.modules, "diffusers", None)  # makes `import diffusers` raise ImportError
    with pytest.raises(ImportError, match=r'pip install "diffprior\[diffusers\]"'):
        load_prior(tmp_path)


@pytest.mark.parametrize("name", ["config.json", "scheduler_config.json"])
def test_a_description_that_is_no_json_object_is_named(tmp_path, name):
    save_model(tmp_path)
    (tmp_path / name).write_text("[1]")
    with pytest.raises(CheckpointError, match=f"{name} is not a JSON object of settings"):
        load_prior(tmp_path)


@pytest.mark.parametrize("change, message", [
    ({"num_train_timesteps": 1}, "num_train_timesteps 1 is not a whole number >= 2"),
    ({"num_train_timesteps": "abc"}, "num_train_timesteps 'abc' is not a whole number"),
    ({"beta_end": "abc"}, "could not convert string to float"),
])
def test_a_bad_schedule_names_its_file(tmp_path, change, message):
    save_model(tmp_path)
    sched = json.loads((tmp_path / "scheduler_config.json").read_text())
    (tmp_path / "scheduler_config.json").write_text(json.dumps({**sched, **change}))
    with pytest.raises(ValueError, match=f"scheduler_config.json: {message}"):
        load_prior(tmp_path)


def test_a_unet_config_diffusers_cannot_build_is_named(tmp_path):
    save_model(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "down_block_types": ["NoSuchBlock2D"] * 2}))
    with pytest.raises(CheckpointError, match="config.json does not describe a UNet2DModel diffusers can build"):
        load_prior(tmp_path)


def test_one_file_of_the_folder_is_pointed_to_the_folder(tmp_path):
    save_model(tmp_path / "model")
    with pytest.raises(ValueError, match=f"config.json is one file of a diffusers model: give its folder, "
                                         f"{tmp_path / 'model'}"):
        load_prior(tmp_path / "model" / "config.json")
    with pytest.raises(ValueError, match="is a diffusers folder, described by its config.json: drop the config"):
        load_prior(tmp_path / "model", config="ffhq256")


@pytest.mark.parametrize("change, scheduler, message", [
    ({"time_embedding_type": "fourier"}, {}, "continuous noise level .* score-SDE"),
    ({"num_class_embeds": 10}, {}, "class-conditional network"),
    ({"in_channels": 4, "out_channels": 4}, {}, "4 input channels .* 1 \\(grey\\) or 3 \\(RGB\\)"),
    ({"out_channels": 6}, {"variance_type": "learned"}, "variance_type 'learned' .* not supported"),
])
def test_networks_that_are_not_unconditional_ddpm_image_models_are_refused_at_load(tmp_path, change, scheduler,
                                                                                   message):
    """Each loaded before (into a prior that failed at its first use, or, for 'learned', asked to be relabelled)."""
    save_model(tmp_path, **scheduler)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(CheckpointError, match=message):
        load_prior(tmp_path)


def test_grey_priors_restore_and_evaluate_and_other_shapes_are_refused_up_front(tmp_path, capsys):
    """A grey prior restores photos read as grey (restore, denoise, demo, eval, reproduce, serve); a non-square
    prior is refused by its shape, instead of failing on a measurement the user never gave. Both sample and solve
    in Python."""
    from PIL import Image
    from diffprior.cli import main
    from diffprior.io import save_image
    photo = save_image(torch.rand(1, 3, 20, 20) * 2 - 1, tmp_path / "photo.png")
    torch.manual_seed(0)
    grey = diffusers.UNet2DModel(sample_size=16, in_channels=1, out_channels=1, layers_per_block=1,
                                 block_out_channels=(16, 32), norm_num_groups=8,
                                 down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"))
    save_model(tmp_path / "grey", unet=grey)
    wide = small_unet()
    wide.register_to_config(sample_size=(16, 32))
    save_model(tmp_path / "wide", unet=wide)
    out = tmp_path / "out"

    def run(command, model, *argv):
        return main([command, *argv, "--model", str(tmp_path / model), "--device", "cpu", "--steps", "2",
                     *["--overwrite"] * (command not in ("eval", "reproduce")),
                     "--out", str(out / (f"{model}-{command}" + ".png" * (command in ("restore", "sample"))))])
    assert run("restore", "grey", str(photo), "--task", "sr4") == 0
    assert "the prior models grey images: " + str(photo) + " is read as grey" in capsys.readouterr().err
    assert Image.open(out / "grey-restore.png").mode == "L"
    assert run("demo", "grey", "--tasks", "box-inpaint", "--methods", "dps") == 0
    assert main(["denoise", str(photo), "--model", str(tmp_path / "grey"), "--device", "cpu",
                 "--out", str(out / "denoised.png")]) == 0 and Image.open(out / "denoised.png").mode == "L"
    assert run("restore", "grey", str(photo), "--task", "colorize") == 2
    assert "colorize restores colour, and this prior models grey images" in capsys.readouterr().err
    assert run("eval", "grey", "--data", str(tmp_path), "--tasks", "sr4", "--methods", "tv", "--save-images", "1") == 0
    from diffprior.commands.serve import Studio  # the web app's restorations, as its page asks for them
    studio = Studio(str(tmp_path / "grey"), torch.device("cpu"), tmp_path / "app")
    done = studio.restore(studio.draw(0), None, "sr4", ["tv"], steps=2, sigma_y=0.05, seed=0)
    assert {Image.open(p).mode for p in done["files"] if str(p).endswith(".png")} == {"L"}
    with pytest.raises(ValueError, match="colorize restores colour"):
        studio.restore(studio.draw(0), None, "colorize", ["tv"], steps=2, sigma_y=0.05, seed=0)
    assert Image.open(next((out / "grey-eval" / "images").rglob("photo.png"))).mode == "L"
    assert main(["reproduce", "--quick", "--data", "generated:2", "--tables", "1", "--model", str(tmp_path / "grey"),
                 "--device", "cpu", "--out", str(out / "grey-reproduce")]) == 0
    assert Image.open(out / "grey-reproduce" / "fig1_denoising.png").convert("HSV").getextrema()[1][1] <= 2  # no colour
    refused = [("wide", command, "square grey or RGB images, and this prior models images of shape 3x16x32")
               for command in ("restore", "demo", "eval", "reproduce")]
    for model, command, message in refused:
        prior = load_prior(tmp_path / model)
        assert run("sample", model) == 0
        argv = {"restore": [str(photo), "--task", "sr4"], "eval": ["--data", str(tmp_path)],
                "reproduce": ["--data", "generated:2"]}.get(command, [])
        assert run(command, model, *argv) == 2
        err = capsys.readouterr().err
        assert f"diffprior {command} works on {message}" in err, err
        assert f"(B, {', '.join(map(str, prior.shape))})" in err
