"""Speed settings of NetworkPrior and the `bench speed` command (no timing is asserted)."""

import argparse
import json
import math
import threading
import time
from functools import partial

import pytest
import torch

from diffprior.commands.bench_speed import compare_dtypes, random_prior
from diffprior import devices
from diffprior import prior as prior_module
from diffprior.cli import main
from diffprior.models import load_prior
from diffprior.operators import measure
from diffprior.tasks import make_operator
from diffprior.solvers import dps, sdedit


TINY_ADM = dict(image_size=32, num_channels=32, num_res_blocks=1, channel_mult="1,2", attention_resolutions="16",
                num_head_channels=32, learn_sigma=True, use_scale_shift_norm=True, resblock_updown=True)


def problem(prior, batch=2, seed=1):
    op = make_operator("box-inpaint", prior.shape)
    x = torch.rand(batch, *prior.shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    return op, measure(op, x, 0.05, torch.Generator().manual_seed(seed + 1))


def run_dps(prior, op, y, steps=3):
    return dps(prior, op, y, steps=steps, generator=torch.Generator().manual_seed(0))


def test_random_prior_is_not_degenerate_and_leaves_the_global_rng_alone():
    state = torch.get_rng_state()
    a, b = random_prior("small-unet:tiny", seed=3), random_prior("small-unet:tiny", seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    x = torch.randn(2, *a.shape)
    with torch.no_grad():
        eps = a.eps(x, 500)
        assert torch.equal(eps, b.eps(x, 500))
    assert 0.05 < float(eps.std()) < 5  # the zero-initialised output layers were randomised too
    assert random_prior(TINY_ADM).learned_variance


def test_default_configure_changes_nothing():
    prior = random_prior("small-unet:tiny")
    assert prior.speed.dtype == "fp32" and not prior.speed.channels_last and prior.speed.compile is None
    op, y = problem(prior)
    x = torch.randn(2, *prior.shape)
    with torch.no_grad():
        eps = prior.eps(x, 400)
    out = run_dps(prior, op, y)
    sde = sdedit(prior, op, y, t0=300, steps=3, generator=torch.Generator().manual_seed(0))
    assert prior.configure() is prior
    with torch.no_grad():
        assert torch.equal(prior.eps(x, 400), eps)
    assert torch.equal(run_dps(prior, op, y), out)
    assert torch.equal(sdedit(prior, op, y, t0=300, steps=3, generator=torch.Generator().manual_seed(0)), sde)
    prior.configure(channels_last=True).configure()  # and back: the weights are contiguous again
    assert all(p.is_contiguous() for p in prior.net.parameters())
    with torch.no_grad():
        assert torch.equal(prior.eps(x, 400), eps)


@pytest.mark.parametrize("config", ["small-unet:tiny", "adm"])
def test_channels_last_gives_the_same_eps_and_gradients(config):
    prior = random_prior(TINY_ADM if config == "adm" else config)
    x = torch.randn(2, *prior.shape)
    w = torch.randn(2, *prior.shape)

    def input_gradient():  # a vector-Jacobian product through the network, as DPS takes
        xg = x.clone().requires_grad_(True)
        return torch.autograd.grad((prior.eps(xg, 250) * w).sum(), xg)[0]

    with torch.no_grad():
        eps, v = prior.predict(x, 250)
    grad = input_gradient()
    prior.configure(channels_last=True)
    assert prior.speed.channels_last
    assert any(p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
               for p in prior.net.parameters())
    with torch.no_grad():
        eps_cl, v_cl = prior.predict(x, 250)
    assert eps_cl.dtype == torch.float32
    assert torch.allclose(eps_cl, eps, atol=1e-5)
    if v is not None:
        assert torch.allclose(v_cl, v, atol=1e-5)
    assert (input_gradient() - grad).norm() <= 1e-5 * grad.norm()  # through autograd too


def test_bf16_is_refused_where_it_would_be_emulated(monkeypatch):
    monkeypatch.setattr(prior_module, "native_bf16", lambda device: False)
    prior = random_prior("small-unet:tiny")
    with pytest.raises(ValueError, match="native bfloat16"):
        prior.configure(dtype="bf16")
    assert prior.speed.dtype == "fp32" and prior.precision == "fp32"  # the refusal changed nothing
    with pytest.raises(ValueError, match="dtype"):
        prior.configure(dtype="fp16")


def test_bf16_autocast_on_a_cpu_with_native_bf16_is_close_to_fp32(monkeypatch):
    """On a CPU with native bf16 (taken as given here: the autocast itself runs on any CPU), the network
    runs under CPU autocast, eps comes back in float32 close to fp32's, and DPS differentiates through it."""
    monkeypatch.setattr(prior_module, "native_bf16", lambda device: device.type == "cpu")
    prior = random_prior("small-unet:tiny")
    x = torch.randn(2, *prior.shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        eps32 = prior.eps(x, 300)
        prior.configure(dtype="bf16")
        eps16 = prior.eps(x, 300)
    assert prior.precision == "bf16" and eps16.dtype == torch.float32
    assert not torch.equal(eps16, eps32)  # it did run in bf16 ...
    assert (eps16 - eps32).norm() < 0.05 * eps32.norm()  # ... to bf16's accuracy
    op, y = problem(prior)
    assert torch.isfinite(run_dps(prior, op, y)).all()


def test_auto_dtype_and_load_prior(monkeypatch):
    cpu = torch.device("cpu")
    for native, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(devices, "native_bf16", lambda device: native)
        assert devices.resolve_dtype("auto", cpu) == expected
        assert devices.resolve_dtype("fp32", cpu) == "fp32"
    with pytest.raises(ValueError, match="dtype"):
        devices.resolve_dtype("fp16", cpu)
    monkeypatch.setattr(devices, "native_bf16", lambda device: False)
    assert load_prior("gmm-demo", dtype="auto").precision == "fp32"  # analytic: exact either way
    with pytest.raises(ValueError, match="dtype"):
        load_prior("gmm-demo", dtype="half")


def test_threads_follow_the_idle_cores(monkeypatch):
    threads = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(devices, "cpu_cores", lambda: 8)
    try:
        for busy, expected in ((0, 8), (3, 5), (8, 1), (20, 1)):
            monkeypatch.setattr(devices, "busy_cores", lambda: busy)
            assert devices.set_cpu_threads() == expected == torch.get_num_threads()
        monkeypatch.setattr(devices, "busy_cores", lambda: 0)
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun: four processes share the cores
        assert devices.set_cpu_threads() == 2
        assert devices.set_cpu_threads(3) == 3  # --threads wins
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        torch.set_num_threads(1)
        assert devices.set_cpu_threads() == 1  # the environment's choice is kept
        with pytest.raises(ValueError, match="at least 1"):
            devices.set_cpu_threads(0)
    finally:
        torch.set_num_threads(threads)
    assert 0 <= devices.busy_cores() < 10_000  # the real reading parses


def test_side_by_side_runs_jobs_at_once_on_one_thread_each_and_restores_the_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        meet = threading.Barrier(2, timeout=10)  # passes only if both jobs run at the same time

        def job(value):
            meet.wait()
            return value, torch.get_num_threads()
        results = dict(devices.side_by_side([partial(job, "a"), partial(job, "b")], workers=2))
        assert results == {0: ("a", 1), 1: ("b", 1)}
        assert torch.get_num_threads() == 2
        # more jobs than workers: every index once; one worker (or one job): in order, on torch's threads
        assert sorted(devices.side_by_side([partial(abs, -i) for i in range(7)], workers=3)) == [(i, i) for i in range(7)]
        assert list(devices.side_by_side([torch.get_num_threads] * 2, workers=1)) == [(0, 2), (1, 2)]
        assert list(devices.side_by_side([torch.get_num_threads], workers=2)) == [(0, 2)]
    finally:
        torch.set_num_threads(threads)


def test_side_by_side_stops_the_running_jobs_and_starts_no_more_after_an_error():
    started, finished = [], []

    def fail():
        started.append("fail")
        time.sleep(0.1)
        raise ValueError("this job failed")

    def slow(i):
        started.append(i)
        for _ in range(1000):  # 10 s of Python lines, where a stop can land
            time.sleep(0.01)
        finished.append(i)
    jobs = [partial(slow, 0), fail, *[partial(slow, i) for i in range(2, 6)]]
    threads, alive, begin = torch.get_num_threads(), threading.active_count(), time.monotonic()
    with pytest.raises(ValueError, match="this job failed"):
        for _ in devices.side_by_side(jobs, workers=2):
            pass
    assert time.monotonic() - begin < 5  # the running jobs were stopped, not waited for
    assert set(started[:2]) == {0, "fail"} and len(started) <= 3 and not finished
    assert torch.get_num_threads() == threads
    assert threading.active_count() == alive  # the workers have ended


def test_compile_setting_freezes_the_network_and_is_undone(monkeypatch):
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: compiled.append(kw) or fn)  # no compilation here
    prior = random_prior("small-unet:tiny")
    prior.configure(compile="max-autotune")
    assert compiled == [{"mode": "max-autotune", "dynamic": False}]
    assert prior.speed.compile == "max-autotune" and prior._compiled is not None
    assert not any(p.requires_grad for p in prior.net.parameters())
    op, y = problem(prior)
    assert run_dps(prior, op, y).shape == y.shape  # DPS differentiates with respect to x only
    prior.configure()
    assert prior._compiled is None and prior.speed.compile is None
    with pytest.raises(ValueError, match="unknown torch.compile mode 'max_autotune'"):
        prior.configure(compile="max_autotune")  # not at the first network call, deep in a run


def test_bench_speed_end_to_end(tmp_path, capsys):
    out = tmp_path / "speed.json"
    code = main(["bench", "speed", "--random-weights", "--config", "small-unet:tiny", "--method", "dps,sdedit",
                 "--batch", "1,2", "--steps", "2", "--warmup", "1", "--forward-reps", "1", "--device", "cpu",
                 "--out", str(out)])
    assert code == 0
    assert "ms/step/img" in capsys.readouterr().out
    doc = json.loads(out.read_text())
    for key in ("device", "device_name", "torch", "parameters", "image_shape", "settings", "note", "runs"):
        assert key in doc
    assert doc["device"] == "cpu" and doc["settings"]["dtype"] == "fp32" and doc["settings"]["compile"] is None
    assert "extrapolated" in doc["note"]
    assert [(r["method"], r["batch"]) for r in doc["runs"]] == [("dps", 1), ("dps", 2), ("sdedit", 1), ("sdedit", 2)]
    for r in doc["runs"]:
        for key in ("ms_per_step_per_image", "images_per_second", "seconds_per_1000_step_image",
                    "peak_memory_bytes", "forward_ms_per_image", "step_over_floor"):
            assert math.isfinite(r[key]) and r[key] > 0, key
        assert r["peak_memory_kind"].startswith("process max RSS")
        assert math.isclose(r["images_per_second"] * r["seconds_per_1000_step_image"], 1, rel_tol=1e-3)
        assert ("forward_backward_ms_per_image" in r) == (r["method"] == "dps")
    again = ["bench", "speed", "--random-weights", "--config", "small-unet:tiny", "--batch", "1", "--steps", "1",
             "--warmup", "0", "--forward-reps", "0", "--device", "cpu", "--out", str(out)]
    assert main(again) == 2 and "pass --overwrite" in capsys.readouterr().err  # the first results stay
    assert len(json.loads(out.read_text())["runs"]) == 4
    assert main(again + ["--overwrite"]) == 0
    (run,) = json.loads(out.read_text())["runs"]
    assert "forward_ms_per_image" not in run and run["ms_per_step_per_image"] > 0  # 0 reps: no forward floor


def test_bench_speed_refuses_bf16_without_native_support(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(prior_module, "native_bf16", lambda device: False)
    args = ["bench", "speed", "--random-weights", "--config", "small-unet:tiny", "--batch", "1", "--steps", "1",
            "--device", "cpu"]
    assert main(args + ["--dtype", "bf16"]) == 2
    assert "native bfloat16" in capsys.readouterr().err
    assert main(args + ["--compare-fp32"]) == 2
    assert "native bfloat16" in capsys.readouterr().err
    for extra, message in ((["--method", ","], "--method names no method"),  # an empty table before
                           (["--task", "unblur"], "unknown task unblur"),  # before the table's header
                           (["--method", "magic"], "unknown method magic; choose from sample or a solver (sdedit,"),
                           (["--method", "repaint", "--task", "sr4"], "--task sr4: repaint: inpainting only"),
                           (["--reference", "face.png"], "--reference is the clean image of --compare-fp32"),
                           (["--compile", "fastest"], "--compile: unknown torch.compile mode 'fastest'; choose from"),
                           (["--model", "faces64"], "--random-weights builds its network from --config: drop --model")):
        assert main(args + extra) == 2
        assert message in capsys.readouterr().err


def test_compare_dtypes_reports_psnr_between_runs():
    prior = random_prior("small-unet:tiny")
    args = argparse.Namespace(seed=0, sigma_y=0.05, compare_steps=2)
    clean = torch.rand(1, *prior.shape, generator=torch.Generator().manual_seed(4)) * 2 - 1
    same = compare_dtypes(prior, "dps", "box-inpaint", 2, args, dtype="fp32", clean=clean)
    assert same["psnr_between_db"] is None and same["max_abs_difference"] == 0  # identical: infinite PSNR
    assert set(same["psnr_vs_reference_db"]) == {"fp32"} and same["psnr_vs_reference_db"]["fp32"] > 0
    assert prior.speed.dtype == "fp32"
