"""Training: exact resume, time budget, Ctrl-C, unreadable files, packs, the exported model.

Everything runs the tiny network on a handful of generated 16x16 images."""

import argparse
import math
import os
import signal

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from diffprior import load_prior
from diffprior.checkpoints import CheckpointError
from diffprior.data import load_faces, load_folder, load_pack, save_pack
from diffprior.io import from_uint8
from diffprior.networks.small import network_config
from diffprior.commands.train import add_arguments as add_train_arguments, run as run_train
from diffprior.train import FACES64, export, learning_rate, read_log, train
import diffprior.train as train_module


SIZE = 16
NET = {**network_config("tiny"), "dropout": 0.1}  # dropout: the global RNG state must resume too
FAST = dict(size=SIZE, batch=4, network=NET, warmup=2, log_every=2, checkpoint_every=0, eval_every=0,
            device="cpu", progress=False)


def write_images(folder, n=6, seed=0):
    """n smooth random colour pictures, PNG and JPEG, some not square (the centre square is used)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        h, w = (SIZE, SIZE) if i % 2 else (SIZE + 6, SIZE + 2)
        base = rng.uniform(0, 255, (2, 2, 3)).astype(np.uint8)
        im = Image.fromarray(base).resize((w, h), Image.BILINEAR)
        im.save(folder / f"{i:06d}.{'png' if i % 3 else 'jpg'}")
    return folder


@pytest.fixture
def faces(tmp_path):
    return write_images(tmp_path / "faces")


def state(out):
    return torch.load(out / "state.pt", weights_only=True)


def assert_same_tree(a, b, path="state"):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            assert_same_tree(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tree(x, y, f"{path}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), path
    else:
        assert a == b, path


def test_resume_is_bit_identical(faces, tmp_path):
    train(faces, tmp_path / "straight", steps=6, **FAST)
    train(faces, tmp_path / "split", steps=3, **FAST)
    assert state(tmp_path / "split")["step"] == 3
    train(faces, tmp_path / "split", steps=6, resume=True, **FAST)
    a, b = state(tmp_path / "straight"), state(tmp_path / "split")
    assert a["step"] == b["step"] == 6
    for key in ("net", "ema", "opt", "rng", "images"):
        assert_same_tree(a[key], b[key], key)
    assert not torch.equal(a["net"]["conv_in.weight"], a["ema"]["conv_in.weight"])  # EMA lags the weights
    assert [r["step"] for r in read_log(tmp_path / "split" / "log.csv")] == [2, 3, 4, 6]


def test_refuses_to_overwrite_a_run(faces, tmp_path, capsys):
    train(faces, tmp_path / "run", steps=1, **FAST)
    with pytest.raises(FileExistsError, match="continue that run with --resume"):
        train(faces, tmp_path / "run", steps=2, **FAST)
    train(faces, tmp_path / "run", steps=1, resume=True, **FAST)
    assert "already at step 1, --steps 1: nothing to train" in capsys.readouterr().err
    train(faces, tmp_path / "new", steps=1, resume=True, **FAST)
    assert "nothing to resume" in capsys.readouterr().err and state(tmp_path / "new")["step"] == 1
    with pytest.raises(ValueError, match="network"):
        train(faces, tmp_path / "run", steps=2, resume=True, **{**FAST, "network": network_config("tiny")})


def test_time_budget_stops_with_a_checkpoint(faces, tmp_path):
    out = tmp_path / "run"
    train(faces, out, steps=10**6, max_minutes=0.02, **FAST)  # the budget counts from the call
    s = state(out)
    assert s["step"] < 10**6
    assert (out / "model.safetensors").is_file()
    train(faces, out, steps=s["step"] + 2, resume=True, **FAST)
    assert state(out)["step"] == s["step"] + 2


def test_a_run_stopped_during_its_final_evaluation_keeps_its_training(faces, tmp_path, monkeypatch):
    """The checkpoint comes before the final evaluation, which can take minutes on a CPU, past a time budget:
    a run killed there (a job's hard limit) keeps every step it trained."""
    def killed(*args, **kwargs):
        raise RuntimeError("killed during the evaluation")

    monkeypatch.setattr(train_module.EpsLoss, "evaluate", killed)
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="killed"):
        train(faces, out, steps=3, val=faces, **FAST)
    assert state(out)["step"] == 3
    assert load_prior(out / "model.safetensors").config["training"]["steps"] == 3
    monkeypatch.undo()
    with pytest.warns(UserWarning, match="6 of the 6 validation images are training images too"):
        train(faces, out, steps=3, val=faces, resume=True, **FAST)  # resumed: only the evaluation is left to do
    rows = read_log(out / "log.csv")
    assert [r["step"] for r in rows] == [2, 3] and rows[-1]["val_loss"] is not None
    assert "val_psnr_100" in load_prior(out / "model.safetensors").config["training"]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])  # Ctrl-C, and `kill` or a job scheduler
def test_ctrl_c_or_sigterm_saves_a_checkpoint(faces, tmp_path, monkeypatch, signum):
    """A stop request during a sample grid (minutes on a CPU) drops the grid at once: the step's checkpoint
    is written, and nothing of the grid."""
    real_sample, drawn = train_module.sample, []

    def interrupted_sample(*args, **kwargs):  # the signal arrives while the step-2 sample grid is drawn
        os.kill(os.getpid(), signum)
        drawn.append(real_sample(*args, **kwargs))

    monkeypatch.setattr(train_module, "sample", interrupted_sample)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt, match="training interrupted at step 2"):
        train(faces, out, steps=100, sample_every=2, sample_n=2, sample_steps=2, **FAST)
    assert state(out)["step"] == 2 and drawn == []
    assert not (out / "samples").exists()
    assert (out / "model.safetensors").is_file()


def test_a_stop_during_a_step_starts_no_grid(faces, tmp_path, monkeypatch):
    real_loss, calls, drawn = train_module.EpsLoss.__call__, [], []

    def interrupted_loss(self, *args):  # Ctrl-C during step 2, whose end draws a grid
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return real_loss(self, *args)

    monkeypatch.setattr(train_module.EpsLoss, "__call__", interrupted_loss)
    monkeypatch.setattr(train_module, "sample", lambda *a, **k: drawn.append(1))
    with pytest.raises(KeyboardInterrupt, match="training interrupted at step 2"):
        train(faces, tmp_path / "run", steps=100, sample_every=2, **FAST)
    assert drawn == [] and state(tmp_path / "run")["step"] == 2


def test_a_second_ctrl_c_waits_for_the_checkpoint_to_be_whole(faces, tmp_path, monkeypatch):
    """Ctrl-C twice while the checkpoint is written: the state and the exported model still agree."""
    real_save = train_module.save_checkpoint

    def interrupted_save(*args, **kwargs):  # both signals arrive between state.pt and the exported model
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
        return real_save(*args, **kwargs)

    monkeypatch.setattr(train_module, "save_checkpoint", interrupted_save)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(faces, out, steps=100, **{**FAST, "checkpoint_every": 3})
    assert state(out)["step"] == 3
    assert load_prior(out / "model.safetensors").config["training"]["steps"] == 3


def test_resuming_a_finished_run_logs_nothing_twice(faces, tmp_path):
    out = tmp_path / "run"
    train(faces, out, steps=4, **FAST)
    train(faces, out, steps=4, resume=True, **FAST)
    assert [r["step"] for r in read_log(out / "log.csv")] == [2, 4]


def test_a_new_run_starts_a_new_log_and_needs_a_folder(faces, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "log.csv").write_text("step,images\n450,1800\n")  # a run stopped before its first checkpoint
    train(faces, out, steps=2, resume=True, **FAST)
    assert [r["step"] for r in read_log(out / "log.csv")] == [2]
    (tmp_path / "file").write_text("")
    with pytest.raises(FileExistsError, match="is a file"):
        train(faces, tmp_path / "file", steps=2, **FAST)


def test_exported_model_loads_and_describes_itself(faces, tmp_path):
    out = tmp_path / "run"
    holdout = write_images(tmp_path / "holdout", n=3, seed=1)
    path = train(faces, out, steps=4, val=holdout, eval_every=2, **{k: v for k, v in FAST.items() if k != "eval_every"})
    prior = load_prior(path)
    assert prior.shape == (3, SIZE, SIZE)
    record = prior.config["training"]
    assert record["steps"] == 4 and record["images_seen"] == 16 and record["data"]["count"] == 6
    assert record["val_loss"] > 0 and record["train_eval_loss"] > 0
    ema = state(out)["ema"]
    assert all(torch.equal(v, ema[k]) for k, v in prior.net.state_dict().items())
    rows = read_log(out / "log.csv")
    assert [r["step"] for r in rows if r["val_loss"] is not None] == [2, 4]
    train(faces, tmp_path / "odd", steps=5, val=holdout, eval_every=2, **{k: v for k, v in FAST.items() if k != "eval_every"})
    rows = read_log(tmp_path / "odd" / "log.csv")  # the last step is evaluated at the end, and logged once
    assert [r["step"] for r in rows] == [2, 4, 5] and rows[-1]["val_loss"] is not None and rows[-1]["loss"] > 0


def test_unreadable_files_are_skipped(faces):
    (faces / "000099.png").write_bytes(b"not an image")
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        got = load_folder(faces, SIZE)
    assert len(got) == 6 and got.images.dtype == torch.uint8 and got.images.shape[1:] == (3, SIZE, SIZE)
    assert got.skipped[0].startswith("000099.png")


def test_selection_and_cache(faces, tmp_path):
    got = load_folder(faces, SIZE, first="000001", last="000004", count=3)
    assert got.names == ["000001.png", "000002.png", "000003.jpg"]
    cache = tmp_path / "cache.zip"
    a = load_faces(faces, SIZE, count=4, cache=cache)
    cached_at = cache.stat().st_mtime_ns
    for p in faces.iterdir():  # the files older than the cache (timestamps can tie within a clock tick)
        os.utime(p, ns=(cached_at - 10 ** 9, cached_at - 10 ** 9))
    (faces / "000001.png").rename(faces / "moved.png")
    (faces / "moved.png").rename(faces / "000001.png")  # same names and contents: the cache is read back
    assert torch.equal(load_faces(faces, SIZE, count=4, cache=cache).images, a.images)
    assert cache.stat().st_mtime_ns == cached_at  # not rewritten
    Image.new("RGB", (SIZE, SIZE), "red").save(faces / "000001.png")  # a file changed after the cache: reread
    b = load_faces(faces, SIZE, count=4, cache=cache)
    assert b.names[1] == "000001.png" and (b.images[1, 0] == 255).all() and (b.images[1, 1:] == 0).all()
    assert torch.equal(b.images[[0, 2, 3]], a.images[[0, 2, 3]]) and cache.stat().st_mtime_ns > cached_at
    good = cache.read_bytes()
    for damaged in (good[:100], good[:-100]):  # a damaged cache is rebuilt
        cache.write_bytes(damaged)
        with pytest.raises(ValueError, match="is not a diffprior face pack, or is damaged"):
            load_pack(cache)
        assert torch.equal(load_faces(faces, SIZE, count=4, cache=cache).images, b.images)
    with pytest.raises(ValueError, match="size"):
        load_faces(cache, 32)
    for read in (lambda **r: load_folder(faces, SIZE, **r), lambda **r: load_faces(cache, SIZE, **r)):  # file, pack
        with pytest.raises(ValueError, match="first '000004' comes after last '000001' .*so nothing is selected"):
            read(first="000004", last="000001")
    with pytest.raises(FileNotFoundError, match="no pack file or image folder at .*typo.zip"):
        load_faces(tmp_path / "typo.zip", SIZE)


@pytest.mark.parametrize("fmt", ["npy", "webp", "jpeg"])
def test_pack_round_trip(faces, tmp_path, fmt):
    got = load_folder(faces, SIZE)
    back = load_pack(save_pack(got, tmp_path / f"p-{fmt}.zip", format=fmt))
    assert back.names == got.names and back.images.shape == got.images.shape
    err = (back.images.float() - got.images.float()).abs()
    assert err.max() == 0 if fmt != "jpeg" else err.mean() < 3


@pytest.mark.parametrize("lr, loss", [(3, r"loss \d[.\d]*e\+\d+;"), (1e30, r"loss (inf|nan);")])
def test_a_diverging_run_stops_with_its_last_good_checkpoint(faces, tmp_path, lr, loss):
    """An exploding loss stops the run as a user's error (it ran to the end and exported a model of huge
    weights while the loss was finite, and ended in an internal error once it was not)."""
    out = tmp_path / "run"
    train(faces, out, steps=2, lr=1e-3, **{**FAST, "checkpoint_every": 2})
    with pytest.raises(train_module.TrainingDiverged, match=loss + r".*lower --lr .*last checkpoint, step \d"):
        train(faces, out, steps=40, lr=lr, resume=True, **{**FAST, "warmup": 0, "checkpoint_every": 1})
    saved = state(out)  # the last checkpoint: at most one step past the last good loss, and finite
    assert saved["step"] in (2, 3) and all(torch.isfinite(v).all() for v in saved["net"].values())
    assert all(torch.isfinite(v).all() for v in load_file(out / "model.safetensors").values())


def test_a_damaged_log_is_named_and_resume_works_without_it(faces, tmp_path):
    out = tmp_path / "run"
    train(faces, out, steps=2, **{**FAST, "checkpoint_every": 2})
    with open(out / "log.csv", "ab") as f:
        f.write(b"\xff\xfe garbage")
    with pytest.raises(ValueError, match=r"log.csv is damaged \(not text at byte \d+\): delete it to resume"):
        train(faces, out, steps=4, resume=True, **FAST)
    (out / "log.csv").unlink()
    train(faces, out, steps=4, resume=True, **FAST)
    assert [r["step"] for r in read_log(out / "log.csv")] == [4]


def test_a_damaged_or_folder_state_is_refused_once_named(faces, tmp_path):
    out = tmp_path / "run"
    train(faces, out, steps=1, **FAST)
    (out / "state.pt").write_bytes((out / "state.pt").read_bytes()[:1000])
    with pytest.raises(CheckpointError) as e:
        train(faces, out, steps=2, resume=True, **FAST)
    said = str(e.value).replace(str(out), "OUT")
    assert said.count("damaged") == 1 and said.endswith("a copy cut short, or a file `diffprior train` did not write?")
    (out / "state.pt").unlink()
    (out / "state.pt").mkdir()
    with pytest.raises(CheckpointError, match="state.pt is a folder, not a training state"):
        train(faces, out, steps=2, resume=True, **FAST)


def test_resuming_with_another_batch_says_so(faces, tmp_path, capsys):
    """It continued silently, and the exported record gave only the new batch."""
    out = tmp_path / "run"
    train(faces, out, steps=2, **FAST)
    train(faces, out, steps=3, resume=True, **{**FAST, "batch": 2})
    assert "note: --batch 2 differs from the 4 images a step this run has trained with" in capsys.readouterr().err
    assert load_prior(out / "model.safetensors").config["training"]["images_seen"] == 2 * 4 + 2
    train(faces, out, steps=4, resume=True, **{**FAST, "batch": 2})
    assert "differs" in capsys.readouterr().err  # 10 images in 3 steps: still mixed
    train(faces, tmp_path / "same", steps=2, **FAST)
    train(faces, tmp_path / "same", steps=3, resume=True, **FAST)
    assert "differs" not in capsys.readouterr().err


def test_command_line(faces, tmp_path):
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    args = parser.parse_args(["--data", str(faces), "--out", str(tmp_path / "run"), "--size", str(SIZE),
                              "--config", "tiny", "--steps", "2", "--batch", "2", "--device", "cpu"])
    assert load_prior(run_train(args)).config["training"]["steps"] == 2


def test_min_snr_weighting_is_min_snr_over_snr():
    """min-SNR-gamma for epsilon prediction: w(t) = min(SNR_t, gamma) / SNR_t, so the loss of a network
    that predicts zeros (per-image error exactly 1 in expectation, here the mean of z^2) is the mean weight."""
    from diffprior.schedule import Schedule
    from diffprior.train import EpsLoss
    schedule = Schedule.linear()
    snr = schedule.abar / (1 - schedule.abar)
    loss = EpsLoss(schedule, torch.device("cpu"), min_snr=5.0)
    assert torch.allclose(loss.weight.double(), torch.minimum(snr, torch.tensor(5.0)) / snr, rtol=1e-6)
    assert loss.weight[0] < 0.01 and loss.weight[-1] == 1.0  # nearly clean steps down-weighted, noisy ones not
    zero_net = lambda x, t: torch.zeros_like(x)  # noqa: E731
    t = torch.tensor([0, 10, 500, 999])
    noise = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    expected = (loss.weight[t] * noise.square().mean(dim=(1, 2, 3))).mean()
    assert torch.allclose(loss(zero_net, torch.zeros(4, 3, 8, 8), t, noise), expected)
    plain = EpsLoss(schedule, torch.device("cpu"))
    assert torch.allclose(plain(zero_net, torch.zeros(4, 3, 8, 8), t, noise), noise.square().mean())


def test_tweedie_psnr_of_the_exact_denoiser():
    """The tracked validation PSNR: a network whose eps is the true noise recovers x0 exactly (infinite
    PSNR is avoided by clamping the error); one that predicts zeros gives x_t / sqrt(abar_t)."""
    from diffprior.schedule import Schedule
    from diffprior.train import EVAL_SEED, EpsLoss
    schedule = Schedule.linear()
    loss = EpsLoss(schedule, torch.device("cpu"))
    images = torch.randint(0, 256, (3, 3, 8, 8), dtype=torch.uint8)
    x0 = images.float() / 127.5 - 1
    t = 300
    noise = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(EVAL_SEED + t))
    a, s = schedule.abar[t].sqrt().float(), (1 - schedule.abar[t]).sqrt().float()
    x_t = a * x0 + s * noise
    expected = (10 * torch.log10(4 / (((x_t / a).clamp(-1, 1) - x0).square().mean(dim=(1, 2, 3))))).mean()
    zero_net = lambda x, t: torch.zeros_like(x)  # noqa: E731
    assert loss.tweedie_psnr(zero_net, images, batch=2, t=t) == pytest.approx(float(expected), abs=1e-4)
    oracle = lambda x, tt: (x - a * x0[:len(x)]) / s if len(x) == 3 else (x - a * x0[2:]) / s  # noqa: E731
    assert loss.tweedie_psnr(oracle, images, batch=3, t=t) > 80


def test_bf16_autocast_on_the_cpu_trains(faces, tmp_path):
    """bf16=True runs the network under CPU bfloat16 autocast, records it, and still lowers the loss."""
    train(faces, tmp_path / "run", steps=6, bf16=True, min_snr=5.0, lr=1e-3, **FAST)
    import json
    record = json.loads((tmp_path / "run" / "model.json").read_text())["training"]
    assert record["bf16_autocast"] is True and "min-SNR-5" in record["objective"]
    log = read_log(tmp_path / "run" / "log.csv")
    assert log[-1]["loss"] < log[0]["loss"]


def test_warm_start_from_a_model(faces, tmp_path):
    """init= starts from another run's exported weights (with lr 0 they come out unchanged), records where
    they came from, refuses a different network, and a resume must name the same init."""
    first = train(faces, tmp_path / "a", steps=3, **FAST)
    second = train(faces, tmp_path / "b", steps=1, lr=0.0, init=first, **FAST)
    a, b = load_prior(first), load_prior(second)
    for (name, wa), wb in zip(a.net.state_dict().items(), b.net.state_dict().values()):
        assert torch.equal(wa, wb), name
    assert b.config["training"]["initialised_from"]["model"] == str(first)
    assert b.config["training"]["initialised_from"]["training"]["steps"] == 3
    with pytest.raises(ValueError, match="cannot start from"):
        train(faces, tmp_path / "c", steps=1, init=first, **{**FAST, "network": {**NET, "base": 32}})
    with pytest.raises(ValueError, match="init differs"):
        train(faces, tmp_path / "b", steps=2, resume=True, **FAST)


def test_warm_start_widened(faces, tmp_path):
    """widen= trains init's network made wider, started as the same function (with lr 0 the export predicts
    what init predicts); the record says so; widen needs init."""
    net32 = {**NET, "base": 32, "dropout": 0.0}
    first = train(faces, tmp_path / "a", steps=2, **{**FAST, "network": net32})
    second = train(faces, tmp_path / "b", steps=1, lr=0.0, init=first, widen=2, **{**FAST, "network": net32})
    a, b = load_prior(first), load_prior(second)
    assert b.config["network"]["base"] == 64 and b.config["training"]["initialised_from"]["widened"] == 2
    x, t = torch.randn(2, 3, SIZE, SIZE), torch.tensor([30, 800])
    with torch.no_grad():
        assert torch.allclose(b.net(x, t), a.net(x, t), atol=1e-4)
    with pytest.raises(ValueError, match="widen needs init"):
        train(faces, tmp_path / "c", steps=1, widen=2, **FAST)


def test_learning_rate_schedule(faces, tmp_path):
    """Warm-up, then constant; with lr_end a half-cosine from decay_from to lr_end at the last step, scaled by
    the warm-up where they overlap; the training log records it step by step."""
    assert [learning_rate(s, 1.0, 4, 100) for s in (0, 3, 50)] == [0.25, 1.0, 1.0]
    rates = [learning_rate(s, 1.0, 0, 10, lr_end=0.1, decay_from=6) for s in range(12)]
    assert rates[:7] == [1.0] * 7 and rates[8] == pytest.approx(0.55) and rates[10:] == [0.1, 0.1]
    assert all(a > b for a, b in zip(rates[6:10], rates[7:11]))
    decaying = [learning_rate(s, 1.0, 4, 10, lr_end=0.0, decay_from=0) for s in range(5)]  # warm-up still applies
    assert decaying[0] == pytest.approx(0.25 * 0.5 * (1 + math.cos(0))) and decaying[1] < decaying[2] < decaying[3]
    assert decaying[3] > decaying[4] == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.4)))
    for wrong, message in [({"lr_end": 2e-3}, "above lr"), ({"lr_end": 1e-4, "decay_from": 6}, "never begin")]:
        with pytest.raises(ValueError, match=message):
            train(faces, tmp_path / "refused", **{"steps": 6, "lr": 1e-3, **FAST, **wrong})
    train(faces, tmp_path / "run", steps=6, lr=1e-3, lr_end=1e-4, decay_from=2, **FAST)
    logged = {row["step"]: row["lr"] for row in read_log(tmp_path / "run" / "log.csv")}
    assert logged[6] == pytest.approx(learning_rate(5, 1e-3, FAST["warmup"], 6, 1e-4, 2))


def test_a_warm_up_beyond_the_run_or_a_batch_beyond_the_data_is_said(faces, tmp_path):
    """Both run as asked (a batch wraps into the next epoch), with a warning that says what they mean."""
    with pytest.warns(UserWarning) as caught:
        train(faces, tmp_path / "run", steps=2, lr=1e-3, **{**FAST, "warmup": 8, "batch": 10})
    said = [str(w.message) for w in caught]
    assert any("warmup=8 (--warmup) is beyond steps=2 (--steps): the learning rate rises only to 0.00025, "
               "not to lr=0.001" in m for m in said)
    assert any("batch=10 (--batch) is larger than the 6 training images" in m for m in said)
    assert [r["images"] for r in read_log(tmp_path / "run" / "log.csv")] == [20]


def test_v_prediction_trains_and_exports_a_v_prior(faces, tmp_path):
    """prediction="v": the loss is the MSE of v (eps-loss weight 1 / abar_t), training lowers it, the exported
    model says so and loads as a v prior; a resume keeps the prediction (another one is refused), and a run
    started from a v model predicts v too unless told otherwise."""
    from diffprior.schedule import Schedule
    from diffprior.train import EpsLoss
    schedule = Schedule.linear()
    v_loss = EpsLoss(schedule, torch.device("cpu"), prediction="v")
    assert torch.allclose(v_loss.weight.double(), 1 / schedule.abar, rtol=1e-6)
    assert torch.allclose(EpsLoss(schedule, torch.device("cpu"), min_snr=5, prediction="v").weight,
                          EpsLoss(schedule, torch.device("cpu"), min_snr=5).weight)
    x0, noise, t = torch.rand(2, 3, 8, 8) * 2 - 1, torch.randn(2, 3, 8, 8), torch.tensor([10, 990])
    a = schedule.abar[t].float().view(-1, 1, 1, 1)
    exact_v = lambda x, tt: a.sqrt() * noise - (1 - a).sqrt() * x0  # noqa: E731
    assert v_loss(exact_v, x0, t, noise) < 1e-8
    path = train(faces, tmp_path / "run", steps=20, lr=2e-3, prediction="v", **FAST)
    prior = load_prior(path)
    assert prior.prediction == "v" and prior.config["training"]["objective"].startswith("v MSE")
    images = from_uint8(load_faces(faces, SIZE).images).repeat(8, 1, 1, 1)  # fixed timesteps and noise
    t = torch.arange(len(images)) * 1000 // len(images)
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(0))
    untrained = v_loss(lambda x, tt: torch.zeros_like(x), images, t, noise)  # the zero-initialised network
    with torch.no_grad():
        assert v_loss(prior.net, images, t, noise) < 0.8 * untrained
    with pytest.raises(ValueError, match="prediction differs"):
        train(faces, tmp_path / "run", steps=21, resume=True, prediction="eps", **FAST)
    assert load_prior(train(faces, tmp_path / "run", steps=21, resume=True, **FAST)).prediction == "v"
    assert load_prior(train(faces, tmp_path / "from-v", steps=1, init=path, **FAST)).prediction == "v"
    shipped = load_prior(export(path, tmp_path / "faces.safetensors", **FACES64, solver_settings={"dps": {}}))
    assert shipped.prediction == "v" and shipped.config["name"] == "faces64" and shipped.config["solver_settings"]
    assert load_file(tmp_path / "faces.safetensors")["out.2.weight"].dtype == torch.float16


def test_shifted_v_prediction_trains_exports_and_is_kept(faces, tmp_path):
    """v_shift: the loss is the MSE of the shifted v (eps-loss weight `v_loss_weight`), the exported model
    records it and loads with it, a run started from it keeps it, and it is refused for an eps network."""
    from diffprior.schedule import Schedule, v_loss_weight
    from diffprior.train import EpsLoss
    schedule = Schedule.linear()
    loss = EpsLoss(schedule, torch.device("cpu"), prediction="v", v_shift=0.01)
    assert torch.allclose(loss.weight.double(), v_loss_weight(schedule.abar, 0.01), rtol=1e-6)
    assert loss.weight[50] == pytest.approx(1.0, abs=0.05) and loss.weight[999] > 1e4
    x0, noise, t = torch.rand(2, 3, 8, 8) * 2 - 1, torch.randn(2, 3, 8, 8), torch.tensor([10, 990])
    a = schedule.abar[t].double().view(-1, 1, 1, 1)
    d = a + 0.01 * (1 - a)
    exact = ((a / d).sqrt() * noise - (0.01 * (1 - a) / d).sqrt() * x0).float()
    assert loss(lambda x, tt: exact, x0, t, noise) < 1e-6
    path = train(faces, tmp_path / "run", steps=3, prediction="v", v_shift=0.01, **FAST)
    prior = load_prior(path)
    assert (prior.prediction, prior.v_shift) == ("v", 0.01) and "SNR / 0.01" in prior.config["training"]["objective"]
    assert load_prior(train(faces, tmp_path / "from", steps=1, init=path, **FAST)).v_shift == 0.01
    with pytest.raises(ValueError, match="prediction='v' only"):
        train(faces, tmp_path / "eps", steps=1, prediction="eps", v_shift=0.5, **FAST)


def test_timestep_density_draws_each_range_as_often_as_its_weight_says(faces, tmp_path, monkeypatch):
    """'0:1,600:0.25': t >= 600 has a quarter of the density, so it is drawn 0.1 / 0.7 of the time, evenly
    within each range; bad specifications are refused; a run with a density resumes bit-exactly and says so."""
    from diffprior.schedule import Schedule
    from diffprior.train import EpsLoss, timestep_density
    probs = timestep_density("0:1,600:0.25", 1000)
    assert torch.allclose(probs[:600], torch.full((600,), 1 / 700)) and torch.allclose(probs[600:], torch.full((400,), 0.25 / 700))
    loss = EpsLoss(Schedule.linear(), torch.device("cpu"), t_density="0:1,600:0.25")
    t = loss.sample_t(200_000, torch.Generator().manual_seed(0))
    assert t.min() >= 0 and t.max() <= 999
    assert abs((t >= 600).float().mean().item() - 0.1 / 0.7) < 0.004  # binomial sd 0.0008
    assert abs((t < 300).float().mean().item() - 0.3 / 0.7) < 0.004
    for bad in ("1:1", "0:1,600", "0:1,1000:1", "0:1,500:1,400:1", "0:0", "0:-1,5:1", "0:x"):
        with pytest.raises(ValueError, match="timestep density"):
            timestep_density(bad, 1000)
    seen, call = [], train_module.EpsLoss.__call__
    monkeypatch.setattr(train_module.EpsLoss, "__call__", lambda self, net, x0, t, noise: seen.append(t) or call(self, net, x0, t, noise))
    straight = train(faces, tmp_path / "straight", steps=4, t_density="0:1,3:0", **FAST)
    assert len(seen) == 4 and torch.cat(seen).max() < 3  # the training steps drew from the density
    train(faces, tmp_path / "split", steps=2, t_density="0:1,3:0", **FAST)
    train(faces, tmp_path / "split", steps=4, t_density="0:1,3:0", resume=True, **FAST)
    assert_same_tree(state(tmp_path / "straight")["net"], state(tmp_path / "split")["net"])
    assert "t of relative density 0:1,3:0" in load_prior(straight).config["training"]["objective"]


def test_settings_used_late_are_checked_first_and_a_time_budget_says_it_stopped(faces, tmp_path, capsys):
    """--sample-steps beyond T was found only at the first grid, after the training it then lost."""
    with pytest.raises(ValueError, match="--sample-steps"):
        train(faces, tmp_path / "late", steps=4, sample_every=2, sample_steps=5000, **FAST)
    assert not (tmp_path / "late" / "state.pt").exists() and not (tmp_path / "late" / "log.csv").exists()
    train(faces, tmp_path / "budget", steps=1000, max_minutes=1e-9, **FAST)
    assert "--max-minutes) is spent; --resume continues" in capsys.readouterr().err


def test_a_finished_model_whose_state_is_gone_is_not_replaced(faces, tmp_path):
    """A user who trained, then deleted the large state.pt, and ran the command again lost the model (exit 0)."""
    out = tmp_path / "run"
    train(faces, out, steps=1, **FAST)
    (out / "state.pt").unlink()
    model = (out / "model.safetensors").read_bytes()
    for resume in (False, True):
        with pytest.raises(FileExistsError, match="model.safetensors exists without state.pt"):
            train(faces, out, steps=2, resume=resume, **FAST)
    assert (out / "model.safetensors").read_bytes() == model


@pytest.mark.parametrize("bad", [dict(val="absent"), dict(val="pack"), dict(t_density="0:1,600")])
def test_a_run_refused_at_its_start_leaves_no_folder(faces, tmp_path, bad):
    """Errors found after the data was read (a bad --val, a --t-density) left OUT holding the data's cache."""
    if bad.get("val") == "pack":
        save_pack(load_folder(faces, 8), tmp_path / "p8.zip")
        bad = dict(val=tmp_path / "p8.zip")
    with pytest.raises((ValueError, FileNotFoundError)) as err:
        train(faces, tmp_path / "run", steps=2, **FAST, **bad)
    assert not (tmp_path / "run").exists()
    if "val" in bad and str(bad["val"]).endswith(".zip"):  # the pack is named, not only the size
        assert "p8.zip holds 8x8 images, but size 16 was asked for (--size)" in str(err.value)


def test_a_resume_says_what_differs_and_keeps_the_runs_seed(faces, tmp_path, capsys):
    out = tmp_path / "run"
    train(faces, out, steps=2, seed=3, **FAST)
    with pytest.raises(ValueError, match="prediction differs\n  checkpoint: eps\n  now:        v"):
        train(faces, out, steps=4, resume=True, prediction="v", **FAST)
    with pytest.raises(ValueError, match=r"init differs\n  checkpoint: none \(random weights\)"):
        train(faces, out, steps=4, resume=True, init=out / "model.safetensors", **FAST)
    train(faces, out, steps=4, resume=True, seed=5, **FAST)  # the run's own seed goes on: an exact resume
    assert "seed 3, the run's own" in capsys.readouterr().err
    assert load_prior(out / "model.safetensors").config["training"]["seed"] == 3


def test_small_images_are_said_to_be_upscaled_and_hidden_files_are_not_read(faces):
    Image.new("RGB", (4000, 10), (9, 9, 9)).save(faces / "strip.png")  # its central square: 10 x 10
    Image.new("RGB", (16, 16), (9, 9, 9)).save(faces / "._000001.png")  # macOS metadata beside an image
    with pytest.warns(UserWarning, match=r"1 of the 7 images in faces are under 16 px on their shorter side: "
                                         r"their central square is upscaled, blurred \(strip.png 4000x10\)"):
        loaded = load_folder(faces, SIZE)
    assert "._000001.png" not in loaded.names and len(loaded) == 7


def test_a_checkpoint_whose_model_cannot_be_written_keeps_the_previous_checkpoint_whole(faces, tmp_path, monkeypatch):
    """The state and the exported model are written as one: a full disk at the model leaves both as they were
    (it left the new state beside the previous model)."""
    import diffprior.train
    run = tmp_path / "run"
    train(faces, run, steps=2, **FAST)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.suffix in (".pt", ".safetensors", ".json")}

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device", str(run / "model.safetensors"))
    monkeypatch.setattr(diffprior.train, "save_checkpoint", full)
    with pytest.raises(OSError, match="No space left on device"):
        train(faces, run, steps=4, resume=True, **FAST)
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.name in before} == before
    assert not [p for p in run.iterdir() if p.name.startswith(".")]  # nothing temporary or kept left behind


@pytest.mark.parametrize("error", [
    RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you "
                 "tried to allocate 26214400000 bytes. Error code 12 (Cannot allocate memory)"),
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of 79 GiB")])
def test_a_batch_too_large_for_memory_names_batch(faces, tmp_path, monkeypatch, capsys, error):
    """The allocator's own message named neither the option nor the size in a unit people read."""
    from diffprior.cli import main

    def out_of_memory(*args, **kwargs):
        raise error
    monkeypatch.setattr(train_module.EpsLoss, "noisy_prediction", out_of_memory)
    assert main(["train", "--data", str(faces), "--out", str(tmp_path / "run"), "--config", "tiny", "--size", "16",
                 "--batch", "100000", "--steps", "1", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    size = "24.4 GiB" if "bytes" in str(error) else "20.00 GiB"
    assert err == f"diffprior train: error: out of memory (one more block of {size} was needed): lower --batch (now 100000)"
