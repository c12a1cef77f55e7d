"""The command line end to end, on the built-in analytic prior (fast and exact)."""

import json
import types

import numpy as np
import pytest
import torch
from PIL import Image

from diffprior.checkpoints import save_checkpoint
from diffprior.cli import main
from diffprior.io import save_image
from diffprior.models import load_prior
from diffprior.networks import build_network
from diffprior.networks.small import network_config
from diffprior.schedule import Schedule


@pytest.fixture
def clean_image(tmp_path):
    """A 64x64 image drawn from the built-in Gaussian-mixture prior, saved as PNG."""
    prior = load_prior("gmm-demo")
    x = prior.sample(1, torch.Generator().manual_seed(5)).float().clamp(-1, 1)
    return save_image(x, tmp_path / "clean.png")


@pytest.mark.parametrize("task,method", [("box-inpaint", "dps"), ("box-inpaint", "scoreald"),
                                         ("random-inpaint", "dps"), ("sr4", "dps")])
def test_restore_beats_the_naive_reconstruction(clean_image, tmp_path, capsys, task, method):
    out = tmp_path / "restored.png"
    code = main(["restore", "--input", str(clean_image), "--task", task, "--method", method, "--model", "gmm-demo",
                 "--steps", "300" if method == "scoreald" else "100", "--out", str(out), "--json", "--device", "cpu"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report) >= {"naive", "restored", "task", "method", "settings", "seconds"}
    assert set(report["restored"]) >= {"psnr", "ssim", "lpips", "residual"}
    assert report["restored"]["psnr"] > report["naive"]["psnr"]
    assert out.is_file() and (tmp_path / "restored_figure.png").is_file()



def test_restore_with_poisson_noise_gives_the_solver_its_average_std(clean_image, tmp_path, capsys):
    """--poisson RATE: photon noise, and DPS is given the Gaussian sigma_y of its average variance,
    sqrt(2 (mean(A x) + 1) / RATE); the restoration still beats the naive reconstruction."""
    from diffprior.io import load_image
    from diffprior.tasks import make_operator
    code = main(["restore", "--input", str(clean_image), "--task", "sr4", "--poisson", "255", "--model", "gmm-demo",
                 "--steps", "100", "--out", str(tmp_path / "r.png"), "--json", "--device", "cpu"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    mean_ax = make_operator("sr4", (3, 64, 64), seed=0).A(load_image(clean_image)[None]).mean().item()
    assert report["poisson_rate"] == 255
    assert report["sigma_y"] == pytest.approx((2 * (mean_ax + 1) / 255) ** 0.5, rel=0.02)
    assert report["restored"]["psnr"] > report["naive"]["psnr"]
    # refused: a photon rate outside its range, and photon noise on an input that is already a measurement
    with pytest.raises(SystemExit, match="2"):
        main(["restore", "--input", str(clean_image), "--task", "sr4", "--poisson", "0"])
    assert "argument --poisson: must be at least 1e-06, got 0" in capsys.readouterr().err
    assert main(["restore", "--input", str(clean_image), "--task", "denoise", "--poisson", "10", "--measured",
                 "--model", "gmm-demo", "--out", str(tmp_path / "m.png"), "--device", "cpu"]) == 2
    assert "--measured input has its own noise" in capsys.readouterr().err

def test_restore_with_a_mask_file_and_a_measured_input(clean_image, tmp_path, capsys):
    mask = torch.ones(3, 64, 64)
    mask[:, 16:40, 16:40] = -1
    save_image(mask, tmp_path / "mask.png")
    code = main(["restore", "--input", str(clean_image), "--mask", str(tmp_path / "mask.png"), "--measured",
                 "--method", "dps", "--model", "gmm-demo", "--steps", "50", "--out", str(tmp_path / "r.png"),
                 "--json", "--device", "cpu"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["task"] == "inpaint" and "psnr" not in report["restored"]  # no ground truth when measured
    assert report["measured"] and report["files"] == [str(tmp_path / "r.png"), str(tmp_path / "r_figure.png")]
    assert (report["mask"], report["crop"], report["full_size"]) == (str(tmp_path / "mask.png"), None, False)
    observed = 3 * (64 * 64 - 24 * 24)
    assert report["restored"]["residual"] < 0.1 * observed ** 0.5  # fits the known pixels to RMS < 0.1


def test_restore_says_when_it_crops_or_upscales_the_photo(tmp_path, capsys):
    Image.fromarray(np.full((20, 30, 3), 128, dtype=np.uint8)).save(tmp_path / "small.png")
    code = main(["restore", "--input", str(tmp_path / "small.png"), "--task", "gaussian-blur", "--method", "tv",
                 "--model", "gmm-demo", "--out", str(tmp_path / "r.png"), "--device", "cpu"])
    assert code == 0
    assert ("note: " + str(tmp_path / "small.png") + " is 30x20: its central 20x20 square is used, upscaled to "
            "64x64") in capsys.readouterr().err


def test_colourising_a_grey_photo_says_its_scores_compare_with_grey(clean_image, tmp_path, capsys):
    Image.fromarray(np.linspace(0, 255, 64 * 64).reshape(64, 64).astype(np.uint8)).save(tmp_path / "grey.png")
    for photo, noted in ((tmp_path / "grey.png", True), (clean_image, False)):
        assert main(["restore", str(photo), "--task", "colorize", "--method", "tv", "--model", "gmm-demo",
                     "--out", str(tmp_path / "r.png"), "--device", "cpu", "--overwrite"]) == 0
        assert ("is grey, so its colours are unknown" in capsys.readouterr().err) == noted
    # --measured: a colour photo's colours are discarded, which was silent
    for photo, noted in ((tmp_path / "grey.png", False), (clean_image, True)):
        assert main(["restore", str(photo), "--task", "colorize", "--method", "tv", "--model", "gmm-demo",
                     "--out", str(tmp_path / "r.png"), "--device", "cpu", "--overwrite", "--measured"]) == 0
        assert ("has colours; --measured colorize takes its grey version" in capsys.readouterr().err) == noted


@pytest.mark.parametrize("argv,message", [
    (["restore", "--input", "missing.png", "--task", "box-inpaint"], "no image file"),
    (["restore", "--input", "{clean}", "--task", "box-inpaint", "--model", "no-such-model"], "no prior called"),
    (["restore", "--input", "{clean}", "--mask", "{big}", "--measured"], "does not fit"),
    (["restore", "--input", "{clean}", "--task", "denoise", "--set", "bogus=1"], "bogus"),
    (["restore", "--input", "{clean}", "--task", "denoise", "--set", "scale=1", "scale=2"], "given twice"),
    (["restore", "--input", "{clean}", "--task", "denoise", "--set", "scale=null"], "takes a value"),
    (["demo", "--tasks", ",", "--model", "gmm-demo"], "--tasks: names none"),
    (["metrics", "{clean}", "{corrupt}"], "cannot read"),
])
def test_bad_input_gives_a_clear_error(clean_image, tmp_path, capsys, argv, message):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"not an image")
    big = save_image(torch.ones(3, 32, 32), tmp_path / "small_mask.png")  # the model's images are 64x64
    argv = [a.format(clean=clean_image, corrupt=corrupt, big=big) for a in argv]
    if argv[0] == "restore" and "--model" not in argv:
        argv += ["--model", "gmm-demo"]
    assert main(argv + (["--device", "cpu"] if argv[0] == "restore" else [])) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("command", ["restore", "denoise"])
def test_the_image_is_given_as_an_argument_or_with_input(clean_image, tmp_path, capsys, command):
    rest = ["--model", "gmm-demo", "--device", "cpu"] + (["--task", "gaussian-blur", "--method", "tv"]
                                                         if command == "restore" else [])
    assert main([command, str(clean_image), "--out", str(tmp_path / "a.png"), *rest]) == 0
    assert main([command, "--out", str(tmp_path / "b.png"), "--input", str(clean_image), *rest]) == 0
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    capsys.readouterr()
    for argv, message in ([[], "one of the arguments IMAGE --input is required"],
                          [[str(clean_image), "--input", str(clean_image)],
                           "argument --input: not allowed with argument IMAGE"]):
        with pytest.raises(SystemExit) as exit_:
            main([command, *argv, *rest])
        assert exit_.value.code == 2
        assert f"diffprior {command}: error: {message} (see" in capsys.readouterr().err


@pytest.mark.parametrize("command,name", [("restore", "restored.png"), ("denoise", "denoised.png")])
def test_an_output_folder_takes_the_commands_file_name(clean_image, tmp_path, command, name):
    rest = ["--model", "gmm-demo", "--device", "cpu"] + (["--task", "sr4", "--method", "tv"]
                                                         if command == "restore" else [])
    (tmp_path / "there").mkdir()
    for out, folder in ((f"{tmp_path / 'new'}/", tmp_path / "new"), (str(tmp_path / "there"), tmp_path / "there")):
        assert main([command, str(clean_image), "--out", out, *rest]) == 0
        assert (folder / name).is_file()
        assert (folder / "restored_figure.png").is_file() == (command == "restore")


def test_sample_into_a_folder_in_batches_continues_after_an_interruption(tmp_path, capsys):
    folder, grid = tmp_path / "samples", tmp_path / "grid.png"
    run = ["sample", "--model", "gmm-demo", "--n", "5", "--batch", "2", "--steps", "5", "--device", "cpu"]
    assert main([*run, "--out", f"{folder}/"]) == 0
    files = sorted(folder.glob("sample_*.png"))
    assert [f.name for f in files] == [f"sample_{i:05d}.png" for i in range(5)]
    before = [f.read_bytes() for f in files]
    assert len(set(before)) == 5  # five different samples
    for f in files[2:4]:  # an interrupted run: the second batch lost
        f.unlink()
    assert main([*run, "--out", str(folder)]) == 0  # an existing folder, without the slash
    assert [f.read_bytes() for f in files] == before  # the batch drawn again alone is the same
    # the grid holds the same samples (each batch from its own seed), in rows of --nrow
    assert main([*run, "--out", str(grid), "--nrow", "3"]) == 0
    cells = np.asarray(Image.open(grid))
    for i, f in enumerate(files):
        top, left = 2 + (i // 3) * 66, 2 + (i % 3) * 66
        assert np.array_equal(cells[top:top + 64, left:left + 64], np.asarray(Image.open(f)))
    capsys.readouterr()
    assert main([*run[:-4], "--steps", "6", "--device", "cpu", "--out", str(folder)]) == 2
    assert "holds samples of other settings or weights (steps: 5 there, 6 now)" in capsys.readouterr().err
    assert main(["sample", "--model", "gmm-demo", "--n", "1025", "--out", str(grid), "--overwrite"]) == 2
    assert "a grid of 1025 samples is too large to look at: give --out a folder" in capsys.readouterr().err
    # a larger --n draws the last batch again whole: the folder holds what one run of that n would
    more = ["--n", "6", "--batch", "2", "--steps", "5", "--device", "cpu"]  # the last batch grows from 1 to 2
    assert main([*run[:3], *more, "--out", str(folder)]) == 0
    assert main([*run[:3], *more, "--out", f"{tmp_path / 'fresh'}/"]) == 0
    extended = [f.read_bytes() for f in sorted(folder.glob("sample_*.png"))]
    assert extended == [f.read_bytes() for f in sorted((tmp_path / "fresh").glob("sample_*.png"))]
    assert extended[:4] == before[:4] and extended[4] != before[4]
    capsys.readouterr()  # fewer than the folder holds: its first batches were drawn for another n
    assert main([*run[:3], "--n", "3", *more[2:], "--out", str(folder)]) == 2
    assert "holds samples beyond the 3 asked for (sample_00003.png ...)" in capsys.readouterr().err


def test_a_folder_of_samples_of_other_weights_is_refused(tmp_path, capsys):
    """Samples of a checkpoint file that changed since (a training run went on) are not continued."""
    net = build_network("small-unet", **{**network_config("tiny"), "image_size": 16})
    config = {"architecture": "small-unet", "network": net.config, "schedule": Schedule.linear().config,
              "image_size": 16, "channels": 3, "learned_variance": False}
    model = save_checkpoint(net, config, tmp_path / "model.safetensors")
    run = ["sample", "--model", str(model), "--n", "2", "--batch", "1", "--steps", "3", "--device", "cpu",
           "--out", f"{tmp_path / 'samples'}/"]
    assert main(run) == 0
    (tmp_path / "samples" / "sample_00001.png").unlink()
    with torch.no_grad():
        next(net.parameters()).add_(0.01)
    save_checkpoint(net, config, model)
    assert main(run) == 2
    assert "holds samples of other settings or weights (weights: " in capsys.readouterr().err


def test_a_folder_of_samples_never_overwrites_files_it_did_not_draw(tmp_path, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(folder / "sample_00001.png")  # the user's own file
    before = (folder / "sample_00001.png").read_bytes()
    run = ["sample", "--model", "gmm-demo", "--n", "4", "--batch", "2", "--steps", "3", "--device", "cpu"]
    assert main([*run, "--out", str(folder)]) == 2
    assert "holds sample_00001.png ... but no samples.json" in capsys.readouterr().err
    assert (folder / "sample_00001.png").read_bytes() == before


def test_a_sample_cut_short_is_drawn_again(tmp_path):
    """A sample_*.png that is not a whole PNG (a copy cut short, a full disk) counts as missing."""
    folder = tmp_path / "samples"
    run = ["sample", "--model", "gmm-demo", "--n", "2", "--batch", "1", "--steps", "3", "--device", "cpu",
           "--out", f"{folder}/"]
    assert main(run) == 0
    whole = (folder / "sample_00001.png").read_bytes()
    (folder / "sample_00001.png").write_bytes(whole[:len(whole) // 2])
    assert main(run) == 0
    assert (folder / "sample_00001.png").read_bytes() == whole


def test_a_run_stopped_before_its_first_sample_fixes_no_settings(tmp_path, capsys):
    """A folder holding only samples.json (stopped before its first batch) takes a run of other settings."""
    folder = tmp_path / "samples"
    run = ["sample", "--model", "gmm-demo", "--n", "1", "--device", "cpu", "--out", f"{folder}/"]
    assert main([*run, "--steps", "3"]) == 0
    (folder / "sample_00000.png").unlink()
    assert main([*run, "--steps", "4"]) == 0
    assert (folder / "sample_00000.png").is_file() and '"steps": 4' in (folder / "samples.json").read_text()
    assert main([*run, "--steps", "3"]) == 2  # the folder now holds a sample of 4 steps
    assert "holds samples of other settings or weights (steps: 4 there, 3 now)" in capsys.readouterr().err


def test_a_folder_of_samples_continues_whatever_the_thread_count(tmp_path, monkeypatch):
    """The analytic prior's buffers, computed at load, change in their last bits with torch's thread count
    (an SVD): that must not make a folder of its samples look like another model's."""
    run = ["sample", "--model", "gmm-demo", "--n", "2", "--batch", "1", "--steps", "3", "--device", "cpu",
           "--out", f"{tmp_path / 'samples'}/"]
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            monkeypatch.setenv("OMP_NUM_THREADS", str(n))  # `sample` keeps the thread count as set
            (tmp_path / "samples" / "sample_00001.png").unlink(missing_ok=True)
            assert main(run) == 0
    finally:
        torch.set_num_threads(threads)


def test_unknown_task_is_rejected_by_the_parser(clean_image):
    with pytest.raises(SystemExit):
        main(["restore", "--input", str(clean_image), "--task", "unblur"])


@pytest.mark.parametrize("argv,prog,unknown", [
    (["pack", "folder", "out.zip", "--out", "x"], "diffprior pack", "--out x"),
    (["bench", "speed", "--bogus"], "diffprior bench speed", "--bogus"),
])
def test_an_unknown_option_is_named_by_its_subcommand(capsys, argv, prog, unknown):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert capsys.readouterr().err == f"{prog}: error: unrecognized arguments: {unknown} (see {prog} --help)\n"


def test_a_warning_is_one_line_named_by_its_command(tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    save_image(torch.zeros(3, 64, 64), folder / "good.png")
    (folder / "broken.png").write_bytes(b"not an image")
    assert main(["pack", str(folder), str(tmp_path / "faces.zip")]) == 0
    err = capsys.readouterr().err
    assert err.startswith("diffprior pack: warning: skipped 1 unreadable file(s) in photos: broken.png")
    assert err.count("\n") == 1 and "UserWarning" not in err


def test_metrics_sample_denoise_models_demo(clean_image, tmp_path, capsys):
    assert main(["metrics", str(clean_image), str(clean_image), "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["psnr"] is None and scores["ssim"] == pytest.approx(1)  # identical: PSNR is infinite
    assert scores["identical"] is True
    assert scores["lpips"] == pytest.approx(0, abs=1e-6)
    assert main(["metrics", str(clean_image), str(clean_image)]) == 0
    assert "psnr inf (identical images)" in capsys.readouterr().out
    tiny = save_image(torch.zeros(3, 8, 8), tmp_path / "tiny.png")
    assert main(["metrics", str(tiny), str(tiny)]) == 0
    assert "ssim - (needs at least 11x11 pixels)" in capsys.readouterr().out
    other = save_image(torch.full((3, 8, 8), 0.5), tmp_path / "other.png")
    assert main(["metrics", str(tiny), str(other), "--json"]) == 0  # LPIPS undefined, yet not identical
    assert json.loads(capsys.readouterr().out) == {"psnr": pytest.approx(12.1, abs=0.1), "ssim": None,
                                                   "lpips": None, "identical": False}

    assert main(["sample", "--model", "gmm-demo", "--n", "4", "--steps", "20", "--out", str(tmp_path / "s.png"),
                 "--device", "cpu"]) == 0
    assert (tmp_path / "s.png").is_file()
    assert main(["sample", "--model", "gmm-demo", "--n", "1", "--steps", "5", "--out", str(tmp_path / "one.png"),
                 "--device", "cpu"]) == 0
    assert Image.open(tmp_path / "one.png").size == (64, 64)  # the sample itself, no grid border

    assert main(["denoise", "--input", str(clean_image), "--t", "200", "--model", "gmm-demo", "--json",
                 "--out", str(tmp_path / "d.png"), "--device", "cpu"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["denoised"]["psnr"] > report["noisy"]["psnr"]
    save_image(torch.zeros(3, 40, 30), tmp_path / "small.png")
    assert main(["denoise", "--input", str(tmp_path / "small.png"), "--t", "200", "--model", "gmm-demo",
                 "--out", str(tmp_path / "d2.png"), "--device", "cpu"]) == 0
    assert "small.png is 30x40: its central 30x30 square is used, upscaled to 64x64" in capsys.readouterr().err

    assert main(["models", "--json"]) == 0
    names = [r["name"] for r in json.loads(capsys.readouterr().out)]
    assert "gmm-demo" in names and "ffhq256-dps" in names

    assert main(["demo", "--model", "gmm-demo", "--steps", "30", "--out", str(tmp_path / "demo"),
                 "--device", "cpu", "--tasks", "box-inpaint,sr4"]) == 0
    rows = json.loads((tmp_path / "demo" / "demo.json").read_text())["rows"]
    assert {(r["task"], r["method"]) for r in rows} >= {("box-inpaint", "dps"), ("sr4", "naive")}
    assert (tmp_path / "demo" / "demo.png").is_file()
    notes = (tmp_path / "demo" / "demo.md").read_text()
    assert "SDEdit uses y only at its start" in notes and "ScoreALD (annealed Langevin) needs" in notes and "with 30 " in notes
    # on a CPU the 8 runs go side by side, one per thread (main set the threads from the idle cores)
    workers = min(torch.get_num_threads(), 8)
    assert json.loads((tmp_path / "demo" / "demo.json").read_text())["settings"]["side_by_side"] == workers
    assert ("runs side by side on one CPU thread each" in notes) == (workers > 1)


def test_demo_keeps_the_other_results_when_a_method_diverges(tmp_path, monkeypatch):
    import diffprior.commands.demo as demo
    real = demo.solve

    def solve(method, *args, **kwargs):
        if method == "ddnm":
            raise demo.DivergenceError("ddnm diverged (non-finite output)")
        return real(method, *args, **kwargs)

    monkeypatch.setattr(demo, "solve", solve)
    assert main(["demo", "--model", "gmm-demo", "--steps", "10", "--out", str(tmp_path / "demo"), "--device", "cpu",
                 "--tasks", "box-inpaint", "--methods", "dps,ddnm"]) == 0
    rows = {r["method"]: r for r in json.loads((tmp_path / "demo" / "demo.json").read_text())["rows"]}
    assert rows["dps"]["psnr"] > rows["naive"]["psnr"] and rows["ddnm"]["psnr"] is None
    assert "box-inpaint / ddnm failed: ddnm diverged" in (tmp_path / "demo" / "demo.md").read_text()
    assert (tmp_path / "demo" / "demo.png").is_file()
    assert main(["demo", "--model", "gmm-demo", "--steps", "10", "--out", str(tmp_path / "none"), "--device", "cpu",
                 "--tasks", "box-inpaint", "--methods", "ddnm"]) == 1  # every restoration failed: not a success
    assert (tmp_path / "none" / "demo.md").is_file()


def test_cpu_steps_cut_only_runs_longer_than_100_network_evaluations(capsys):
    from diffprior.commands.common import cpu_steps
    from diffprior.models import load_prior
    from diffprior.solvers import settings_for
    prior, cpu, gpu = load_prior("gmm-demo"), torch.device("cpu"), torch.device("cuda")
    own = lambda method, task="sr4", **s: settings_for(method, task, **s)  # noqa: E731
    assert cpu_steps(cpu, None, prior, "dps", own("dps")) == 100  # 1000 steps
    assert "dps runs 100 steps (100 network evaluations) on the CPU, where its own 1000" in capsys.readouterr().err
    assert cpu_steps(cpu, None, prior, "repaint", own("repaint")) is None  # its own 100 steps: nothing to cut
    assert capsys.readouterr().err == ""
    assert cpu_steps(cpu, None, prior, "ddrm", own("ddrm")) is None  # its own 20: more would be worse
    assert cpu_steps(cpu, None, prior, "diffpir", own("diffpir")) is None  # its own 100
    assert cpu_steps(cpu, None, prior, "tv", own("tv")) is None  # no network: its 300 iterations
    assert cpu_steps(cpu, None, prior, "sdedit", own("sdedit", t0=50)) is None  # 51 steps from t0 = 50
    assert cpu_steps(cpu, None, prior, "sdedit", own("sdedit", t0=200)) == 100
    assert cpu_steps(cpu, 1000, prior, "dps", own("dps")) == 1000 and cpu_steps(gpu, None, prior, "dps", own("dps")) is None
    assert capsys.readouterr().err.count("note:") == 1  # the sdedit one; the rest were not cut
    short = types.SimpleNamespace(schedule=Schedule.linear(50))  # a prior of 50 timesteps: no more steps than that
    assert cpu_steps(cpu, None, short, "daps", settings_for("daps", "sr4")) == 50
    assert "daps runs 50 steps" in capsys.readouterr().err


def test_cpu_sample_steps_serve_sample_and_the_demos_draw(capsys):
    from diffprior.commands.common import cpu_sample_steps
    from diffprior.models import load_prior
    prior, cpu, gpu = load_prior("gmm-demo"), torch.device("cpu"), torch.device("cuda")
    assert cpu_sample_steps(cpu, None, prior) == 100  # of its 1000
    assert "sampling with 100 of the prior's 1000 steps" in capsys.readouterr().err
    assert cpu_sample_steps(cpu, 1000, prior) == 1000 and cpu_sample_steps(gpu, None, prior) is None
    assert cpu_sample_steps(cpu, None, prior, note=False) == 100 and not capsys.readouterr().err


def test_restore_takes_evals_method_dot_key_form_for_its_own_method(clean_image, tmp_path, capsys):
    base = ["restore", "--input", str(clean_image), "--task", "sr4", "--method", "ddnm", "--model", "gmm-demo",
            "--steps", "5", "--json", "--device", "cpu"]
    assert main([*base, "--set", "ddnm.eta=0.5", "--out", str(tmp_path / "a.png")]) == 0
    assert json.loads(capsys.readouterr().out)["settings"]["eta"] == 0.5


def test_restore_with_posterior_samples(clean_image, tmp_path, capsys):
    out = tmp_path / "mean.png"
    assert main(["restore", "--input", str(clean_image), "--task", "box-inpaint", "--method", "dps", "--model",
                 "gmm-demo", "--steps", "30", "--samples", "4", "--out", str(out), "--json", "--device", "cpu"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["uncertainty"]["samples"] == 4 and 0 <= report["uncertainty"]["coverage90"] <= 1
    assert report["uncertainty"]["mean_std"] > 0
    for name in ("mean.png", "mean_std.png", "mean_calibration.png", "mean_figure.png"):
        assert (tmp_path / name).is_file()
    # replaced by a run without samples: no std map or calibration figure of the old run is left beside it
    assert main(["restore", "--input", str(clean_image), "--task", "box-inpaint", "--method", "dps", "--model",
                 "gmm-demo", "--steps", "5", "--out", str(out), "--overwrite", "--device", "cpu"]) == 0
    assert sorted(p.name for p in tmp_path.glob("mean*")) == ["mean.png", "mean_figure.png"]


def test_an_error_in_the_middle_of_a_progress_bar_starts_on_a_line_of_its_own(capsys, monkeypatch):
    import argparse
    from tqdm import tqdm
    from diffprior import cli

    def run(args):
        bar = tqdm(total=10, desc="working")
        bar.update(3)
        raise ValueError("the disk is full")
    assert cli._execute(argparse.Namespace(command="demo", run=run, debug=False)) == 2
    err = capsys.readouterr().err
    assert "\ndiffprior demo: error: the disk is full" in err and not list(getattr(tqdm, "_instances", ()))
