"""`diffprior eval`: rows and summary, resume after a hard kill, the settings check, and a 2-process run.

Everything runs a tiny random network prior (32x32) on a few generated pictures and one corrupt file."""

import csv
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import diffprior.commands.evaluate as evaluate_module
from diffprior.cli import main
from diffprior.commands.evaluate import (mean_ci, parse_grid, select_images, summarize, sweep_figure, sweeps, t_quantile,
                                         write_summary)
from diffprior.io import save_image
from diffprior.checkpoints import save_checkpoint
from diffprior.networks import build_network
from diffprior.networks.small import network_config
from diffprior.schedule import Schedule

STEPS = 4
IMAGES = 4
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread everywhere: the same float sums in every process



@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A folder of smooth random pictures plus a corrupt file, and a tiny random network prior."""
    root = tmp_path_factory.mktemp("eval")
    data = root / "data"
    g = torch.Generator().manual_seed(0)
    for i in range(IMAGES):
        x = F.interpolate(torch.rand(1, 3, 4, 4, generator=g) * 2 - 1, size=(32, 32), mode="bilinear")
        save_image(x, data / f"img_{i:03d}.png")
    (data / "broken.png").write_bytes(b"this is not a PNG file")
    net = build_network("small-unet", **{**network_config("tiny"), "image_size": 32})
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(0.05 * torch.randn(p.shape, generator=g))
    config = {"architecture": "small-unet", "network": net.config, "schedule": Schedule.linear().config,
              "image_size": 32, "channels": 3, "learned_variance": False}
    model = save_checkpoint(net, config, root / "tiny.safetensors")
    return root, data, model


def command(data, model, out, *extra) -> list[str]:
    return ["eval", "--data", str(data), "--out", str(out), "--model", str(model), "--device", "cpu",
            "--tasks", "box-inpaint,random-inpaint", "--methods", "sdedit,dps", "--set", "sdedit.t0=300,600",
            "--seeds", "2", "--batch", "3", "--steps", str(STEPS), "--no-progress", *extra]


def rows_of(out: Path) -> list[dict]:
    with open(out / "rows.csv", newline="") as f:
        return list(csv.DictReader(f))


def numbers(rows: list[dict]) -> list[dict]:
    """The rows without their timings: what must be identical between runs."""
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def assert_close(a, b, where="rows"):
    """Equal but for float rounding: the same keys, names and settings, numbers within 1e-5 relative.

    Another split of the images into batches (a resumed run, two ranks) changes float sums in the last digits."""
    if isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_close(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), where
        for i, (u, v) in enumerate(zip(a, b)):
            assert_close(u, v, f"{where}[{i}]")
    else:
        try:
            u, v = float(a), float(b)
        except (TypeError, ValueError):
            assert a == b, where
        else:
            assert u == pytest.approx(v, rel=1e-5, abs=1e-6, nan_ok=True), where


@pytest.fixture(scope="module")
def reference(setup):
    """One uninterrupted single-process run."""
    root, data, model = setup
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(command(data, model, root / "reference")) == 0
    finally:
        torch.set_num_threads(n)
    return root / "reference"


def test_rows_summary_and_skipped_file(reference):
    rows = rows_of(reference)
    cells = 1 + 2 + 1  # naive, sdedit at two t0, dps
    assert len(rows) == IMAGES * 2 * 2 * cells
    keys = [(r["image"], r["task"], r["method"], r["settings"], r["seed"]) for r in rows]
    assert len(set(keys)) == len(keys)
    assert {r["image"] for r in rows} == {f"img_{i:03d}.png" for i in range(IMAGES)}
    assert {r["settings"] for r in rows if r["method"] == "sdedit"} == {
        json.dumps({"steps": STEPS, "t0": t0}, separators=(",", ":")) for t0 in (300, 600)}
    for r in rows:
        assert int(r["nfe"]) == (0 if r["method"] == "naive" else STEPS)
        assert all(math.isfinite(float(r[m])) for m in ("psnr", "ssim", "lpips", "residual", "seconds"))
    assert "broken.png" in (reference / "skipped.txt").read_text()
    assert json.loads((reference / "run.json").read_text())["identity"]["steps"] == STEPS

    summary = json.loads((reference / "summary.json").read_text())
    assert len(summary["cells"]) == 2 * cells
    for cell in summary["cells"]:
        assert cell["images"] == IMAGES and cell["seeds"] == 2 and cell["rows"] == 2 * IMAGES
        assert cell["psnr"]["n"] == IMAGES and cell["psnr"]["ci95"] > 0 and cell["psnr"]["missing"] == 0
        assert set(cell["psnr"]["seed_means"]) == {"0", "1"}
    # the summary's mean is the mean over images of each image's mean over seeds
    dps = next(c for c in summary["cells"] if c["method"] == "dps" and c["task"] == "box-inpaint")
    per_image = {}
    for r in rows:
        if r["method"] == "dps" and r["task"] == "box-inpaint":
            per_image.setdefault(r["image"], []).append(float(r["psnr"]))
    assert dps["psnr"]["mean"] == pytest.approx(sum(sum(v) / 2 for v in per_image.values()) / IMAGES)
    text = (reference / "summary.md").read_text()
    assert "## box-inpaint" in text and "±" in text and "| naive |" in text


def test_rerun_of_a_finished_run_changes_nothing(reference, tmp_path, setup, capsys):
    _, data, model = setup
    out = tmp_path / "again"
    shutil.copytree(reference, out)
    files = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.rglob("*") if p.is_file()}
    assert main(command(data, model, out)) == 0
    assert rows_of(out) == rows_of(reference)
    # no file is written again (nor opened for appending): a finished run can be reread in a read-only folder
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.rglob("*") if p.is_file()} == files
    err = capsys.readouterr().err
    assert err.count("skipping broken.png") == 1 and "0 to do" in err and "note:" not in err
    assert "were up to date: nothing written" in err and "wrote" not in err


def test_images_to_keep_of_rows_already_done_are_named_as_missing(setup, tmp_path, capsys):
    """--save-images on a run whose rows are done: the images it cannot keep are counted; once a run kept
    them, a rerun says nothing."""
    _, data, model = setup
    few = ["--tasks", "box-inpaint", "--seeds", "1"]
    assert main(command(data, model, tmp_path / "plain", *few)) == 0
    assert main(command(data, model, tmp_path / "plain", *few, "--save-images", "1")) == 0
    err = capsys.readouterr().err
    assert "note: 4 restorations to keep as images belong to rows already done" in err  # 4 cells, 1 image
    assert not (tmp_path / "plain" / "images").exists()
    assert main(command(data, model, tmp_path / "kept", *few, "--save-images", "1")) == 0
    assert main(command(data, model, tmp_path / "kept", *few, "--save-images", "1")) == 0
    assert len(list((tmp_path / "kept" / "images").rglob("*.png"))) == 4 and "note:" not in capsys.readouterr().err


def test_resume_after_a_hard_kill_gives_the_same_rows(reference, setup, tmp_path):
    _, data, model = setup
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "diffprior", *command(data, model, out)], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows_file, deadline = out / "rows.csv", time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if rows_file.is_file() and rows_file.read_text().count("\n") >= 6:  # the header and 5 rows
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    before = rows_file.read_text()
    with open(rows_file, "a") as f:  # a torn last line, as a kill in the middle of a write leaves
        f.write("img_003.png,random-inpaint,dps,\"{\"\"sca")
    assert main(command(data, model, out)) == 0
    rows = rows_of(out)
    assert_close(numbers(rows), numbers(rows_of(reference)))  # the resumed images may form other batches
    done_before = before.count("\n") - 1
    assert 5 <= done_before < len(rows)
    # the rows written before the kill are kept as they were (their timings included)
    kept = {tuple(r.values()) for r in csv.DictReader(before.splitlines())}
    assert kept <= {tuple(r.values()) for r in rows}


def test_other_settings_are_refused(reference, setup, tmp_path, capsys):
    _, data, model = setup
    out = tmp_path / "mismatch"
    shutil.copytree(reference, out)
    other = command(data, model, out)
    other[other.index("--steps") + 1] = str(STEPS + 1)
    assert main(other) == 2
    err = capsys.readouterr().err
    assert "other settings" in err and "steps: 4 there, 5 now" in err
    assert main(command(data, model, out, "--sigma-y", "0.1")) == 2
    assert "sigma_y" in capsys.readouterr().err
    assert rows_of(out) == rows_of(reference)


def test_rows_without_their_run_record_or_not_text_are_refused(reference, setup, tmp_path, capsys):
    """Rows whose settings are unknown (run.json deleted, rows copied by hand) must not pass for this run's,
    and a row file with bytes that are not text is named, not a bare decoding error."""
    _, data, model = setup
    out = tmp_path / "copied"
    shutil.copytree(reference, out)
    (out / "run.json").unlink()
    assert main(command(data, model, out, "--sigma-y", "0.1")) == 2
    assert "rows.csv has no run.json beside it" in capsys.readouterr().err
    assert not (out / "run.json").exists() and rows_of(out) == rows_of(reference)
    damaged = tmp_path / "damaged"
    shutil.copytree(reference, damaged)
    with open(damaged / "rows.csv", "ab") as f:
        f.write(b"\x00\xff\n")
    assert main(command(data, model, damaged)) == 2
    assert f"{damaged / 'rows.csv'} is damaged (not text at byte" in capsys.readouterr().err


def test_two_processes_with_torchrun_give_the_same_rows(reference, setup, tmp_path):
    _, data, model = setup
    out = tmp_path / "torchrun"
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                             "-m", "diffprior", *command(data, model, out)],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # torchrun and its workers
    assert proc.returncode == 0, err[-3000:]
    # two ranks split the images into other batches than one process: the same rows, up to float rounding
    assert_close(numbers(rows_of(out)), numbers(rows_of(reference)))
    assert not list(out.glob("rows.rank*.csv"))
    untimed = lambda path: [{k: v for k, v in c.items() if k != "seconds"}  # noqa: E731
                            for c in json.loads((path / "summary.json").read_text())["cells"]]
    assert_close(untimed(out), untimed(reference), "cells")


def test_a_stale_torchrun_environment_ends_with_a_clear_error(setup, tmp_path, monkeypatch, capsys):
    """WORLD_SIZE left in a shell: the process waited 7 days for ranks that never come, printing nothing."""
    _, data, model = setup
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(evaluate_module, "JOIN_TIMEOUT", timedelta(seconds=2))
    for name, value in dict(WORLD_SIZE="2", RANK="0", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                            MASTER_PORT=str(port)).items():
        monkeypatch.setenv(name, value)
    assert main(command(data, model, tmp_path / "stale")) == 2
    err = capsys.readouterr().err
    assert "rank 0 of 2 (WORLD_SIZE from the environment" in err and "waiting up to" in err
    assert f"did not meet at 127.0.0.1:{port}" in err and "unset WORLD_SIZE" in err
    monkeypatch.setenv("WORLD_SIZE", "abc")
    assert main(command(data, model, tmp_path / "stale")) == 2
    assert "the environment variable WORLD_SIZE is 'abc', not a whole number" in capsys.readouterr().err
    assert not (tmp_path / "stale").exists()


def test_small_images_have_no_lpips(setup, tmp_path):
    """At 16x16 LPIPS is undefined: empty fields in rows.csv, None in the summary, '-' in the table."""
    _, data, model = setup
    out = tmp_path / "small"
    assert main(["eval", "--data", str(data), "--out", str(out), "--model", str(model), "--device", "cpu",
                 "--size", "16", "--limit", "2", "--tasks", "box-inpaint", "--methods", "sdedit", "--steps", "2",
                 "--no-progress"]) == 0
    rows = rows_of(out)
    assert len(rows) == 4 and all(r["lpips"] == "" and r["psnr"] for r in rows)
    cell = json.loads((out / "summary.json").read_text())["cells"][0]
    assert cell["lpips"]["mean"] is None and cell["lpips"]["missing"] == 2
    assert "| - |" in (out / "summary.md").read_text()


def test_selection_by_name_range(tmp_path):
    for name in ("009500", "009501", "009502", "010000", "010001"):
        save_image(torch.zeros(1, 3, 8, 8), tmp_path / f"{name}.jpg")
    names = lambda paths: [p.stem for p in paths]  # noqa: E731
    assert names(select_images(tmp_path, first="009501", last="010000")) == ["009501", "009502", "010000"]
    assert names(select_images(tmp_path, first="009501", n=2)) == ["009501", "009502"]
    assert names(select_images(tmp_path, n=1)) == ["009500"]
    save_image(torch.zeros(1, 3, 8, 8), tmp_path / "009501.png")  # its restorations would overwrite 009501.jpg's
    with pytest.raises(ValueError, match="009501.jpg and 009501.png .* share the name '009501'"):
        select_images(tmp_path)


def test_bad_data_or_out_is_refused_before_anything_is_written(setup, tmp_path, capsys):
    """A mistyped or empty --data folder leaves no run.json behind to block the corrected command."""
    _, data, model = setup
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("")
    for folder, message in ((tmp_path / "typo", "no folder at"), (tmp_path / "empty", "no readable image"),
                            (tmp_path / "file", "file is a file: give a folder of images")):
        assert main(command(folder, model, tmp_path / "out")) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "out").exists()
    assert main(command(data, model, tmp_path / "file")) == 2
    assert "is a file" in capsys.readouterr().err
    for extra, message in ((["--methods", ","], "--methods names no method"),  # it scored naive alone
                           (["--steps", "2000"], "at most the prior's T = 1000"),  # settings: refused up front too
                           (["--set", "dps.loss=../evil"], "dps setting loss='../evil': expected one of"),
                           (["--set", "daps.ode_steps=0", "--methods", "sdedit,daps"], "at least 1")):
        assert main(command(data, model, tmp_path / "out", *extra)) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "out").exists()


def test_settings_grid():
    grid = parse_grid(["sdedit.t0=400,500", "dps.scale=0.3,0.5", "dps.loss=norm,squared"], ["sdedit", "dps", "ddrm"])
    assert grid["sdedit"] == [{"t0": 400}, {"t0": 500}]
    assert len(grid["dps"]) == 4 and {"scale": 0.3, "loss": "squared"} in grid["dps"]
    assert grid["ddrm"] == [{}]
    with pytest.raises(ValueError, match="no setting"):
        parse_grid(["dps.t0=1"], ["dps"])
    with pytest.raises(ValueError, match="not one of"):
        parse_grid(["sdedit.t0=1"], ["dps"])
    with pytest.raises(ValueError, match="given twice"):
        parse_grid(["ddrm.eta=0.5", "ddrm.eta=0.7"], ["ddrm"])  # not silently the last one
    assert parse_grid(["dps.scale=0.1,0.1,0.2"], ["dps"])["dps"] == [{"scale": 0.1}, {"scale": 0.2}]  # once each
    # a DPS scale table's commas stay inside it; two tables, or a table and a number, are two cells
    assert parse_grid(['dps.scale={"50": 2, "100": 3},{"50": 1},0.5'], ["dps"])["dps"] == [
        {"scale": {"50": 2, "100": 3}}, {"scale": {"50": 1}}, {"scale": 0.5}]


def test_a_setting_swept_over_three_values_is_plotted(setup, tmp_path, capsys):
    """sweeps: the cells of one task and method that differ in one number alone, 3 or more values, in order;
    eval draws them in OUT/sweep.png, and no figure where nothing was swept."""
    row = {"image": "im0", "task": "blur", "seed": "0", "psnr": "20", "ssim": "0.5", "lpips": "0.1", "residual": "1",
           "seconds": "0.1", "nfe": "3"}
    settings = [("dps", '{"scale":3,"steps":5}'), ("dps", '{"scale":1,"steps":5}'), ("dps", '{"scale":2,"steps":5}'),
                ("dps", '{"loss":"squared","scale":2,"steps":5}'), ("sdedit", '{"t0":100}'), ("sdedit", '{"t0":200}'),
                ("naive", "{}")]
    run = {"model": "m", "images": 1, "seeds": 1, "steps": 5, "sigma_y": 0.05, "batch": 8, "size": 64, "data": "d"}
    summary = summarize([{**row, "method": m, "settings": s} for m, s in settings], run)
    (task, method, key, rest, cells), = sweeps(summary["cells"])
    assert (task, method, key, rest) == ("blur", "dps", "scale", '{"steps":5}')
    assert [c["settings"]["scale"] for c in cells] == [1, 2, 3]
    assert Image.open(sweep_figure(summary, tmp_path / "sweep.png")).size[0] > 100
    assert sweep_figure(summarize([{**row, "method": m, "settings": s} for m, s in settings[3:]], run),
                        tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()
    root, data, model = setup
    for values, out in (("200,400,600", tmp_path / "swept"), ("200,400", tmp_path / "two")):
        assert main(["eval", "--data", str(data), "--out", str(out), "--model", str(model), "--device", "cpu",
                     "--tasks", "box-inpaint", "--methods", "sdedit", "--set", f"sdedit.t0={values}", "--steps", "3",
                     "--limit", "2", "--no-progress"]) == 0
    assert (tmp_path / "swept" / "sweep.png").is_file() and not (tmp_path / "two" / "sweep.png").exists()
    assert f"and {tmp_path / 'swept' / 'sweep.png'}" in capsys.readouterr().err


def test_student_t_quantiles_and_intervals():
    for df, t in [(1, 12.7062), (2, 4.3027), (3, 3.1824), (4, 2.7764), (9, 2.2622), (30, 2.0423), (120, 1.9799),
                  (1000, 1.9623)]:
        assert t_quantile(0.975, df) == pytest.approx(t, abs=1e-4)
    ci = mean_ci([1.0, 2.0, 3.0])
    assert ci["mean"] == 2.0 and ci["ci95"] == pytest.approx(4.3027 / math.sqrt(3), abs=1e-4)
    assert mean_ci([5.0])["ci95"] is None
    summary = summarize([{"image": "a", "task": "t", "method": "m", "settings": "{}", "seed": "0", "psnr": "inf",
                          "ssim": "", "lpips": "", "residual": "1", "seconds": "0.1", "nfe": "3"}], {})
    assert summary["cells"][0]["psnr"]["missing"] == 1 and summary["cells"][0]["nfe"]["mean"] == 3


def test_each_cell_is_compared_with_its_tasks_best_image_by_image(tmp_path):
    """The paired difference removes what the images share: two methods 0.5 dB apart on images whose PSNR
    spreads over 10 dB are ranked by the paired interval, not by the overlapping unpaired ones."""
    row = {"ssim": "0.5", "lpips": "0.1", "residual": "1", "seconds": "0.1", "nfe": "3"}
    base = {f"im{i}": 20.0 + 2 * i for i in range(6)}
    rows = []
    for seed, jitter in (("0", 0.02), ("1", -0.02)):  # two seeds, averaged per image first
        for image, psnr in base.items():
            rows += [{**row, "image": image, "task": "blur", "method": "a", "settings": "{}", "seed": seed,
                      "psnr": str(psnr)},
                     {**row, "image": image, "task": "blur", "method": "b", "settings": '{"k":1}', "seed": seed,
                      "psnr": str(psnr - 0.5 + jitter * int(image[-1]))},
                     {**row, "image": image, "task": "sr", "method": "a", "settings": "{}", "seed": seed,
                      "psnr": str(psnr - 3)}]
    rows.append({**row, "image": "extra", "task": "blur", "method": "b", "settings": '{"k":1}', "seed": "0",
                 "psnr": "99"})  # an image the best cell lacks: no pair, left out of the difference
    run = {"model": "m", "images": 7, "seeds": 2, "steps": 5, "sigma_y": 0.05, "batch": 8, "size": 64, "data": "d"}
    summary = summarize([r for r in rows if r["image"] != "extra"], run)
    a, b, sr = summary["cells"]
    assert a["psnr_vs_best"]["mean"] == 0 and a["psnr_vs_best"]["ci95"] == 0 and a["psnr_vs_best"]["best"] == "a {}"
    assert b["psnr_vs_best"]["mean"] == pytest.approx(-0.5) and b["psnr_vs_best"]["ci95"] < 1e-9  # seeds cancel
    assert b["psnr"]["ci95"] > 3  # unpaired, the two cells' intervals overlap
    assert sr["psnr_vs_best"]["mean"] == 0  # each task its own best
    summary = summarize(rows, run)
    b = summary["cells"][1]
    assert b["psnr"]["mean"] > summary["cells"][0]["psnr"]["mean"]  # the extra image makes b the best on average
    assert b["psnr_vs_best"]["best"] == 'b {"k":1}' and summary["cells"][0]["psnr_vs_best"]["n"] == 6
    assert summary["cells"][0]["psnr_vs_best"]["mean"] == pytest.approx(0.5)
    write_summary(tmp_path, summarize([r for r in rows if r["image"] != "extra"], run))
    text = (tmp_path / "summary.md").read_text()
    assert "PSNR - best (paired) |" in text and "| best |" in text and "| -0.50 ± 0.00 |" in text
    assert "psnr_vs_best" not in json.dumps(summarize(rows, run, paired=False))
    write_summary(tmp_path, summarize(rows, run, paired=False))
    assert "paired" not in (tmp_path / "summary.md").read_text()


def test_the_spread_over_seeds_is_pooled_within_images(tmp_path):
    """Image a moves by 2 dB between its seeds (variance 2), image b not at all: the pooled standard deviation
    is sqrt((2 + 0) / 2) = 1, while the images' own 10 dB apart does not enter it."""
    row = {"task": "t", "method": "m", "settings": "{}", "ssim": "0.5", "lpips": "0.1", "residual": "1",
           "seconds": "0.1", "nfe": "3"}
    rows = [{**row, "image": image, "seed": seed, "psnr": psnr}
            for image, seed, psnr in (("a", "0", "10"), ("a", "1", "12"), ("b", "0", "20"), ("b", "1", "20"),
                                      ("c", "0", "30"))]  # c has one seed: nothing to say about its spread
    run = {"model": "m", "images": 3, "seeds": 2, "steps": 5, "sigma_y": 0.05, "batch": 8, "size": 64, "data": "d"}
    cell = summarize(rows, run)["cells"][0]
    assert cell["psnr"]["seed_sd"] == pytest.approx(1.0) and cell["ssim"]["seed_sd"] == 0
    write_summary(tmp_path, summarize(rows, run))
    text = (tmp_path / "summary.md").read_text()
    assert "PSNR per seed | PSNR sd over seeds |" in text and "| 20.00 / 16.00 | 1.00 |" in text
    one_seed = [r for r in rows if r["seed"] == "0"]
    assert summarize(one_seed, run)["cells"][0]["psnr"]["seed_sd"] is None
    write_summary(tmp_path, summarize(one_seed, run))
    assert "over seeds" not in (tmp_path / "summary.md").read_text()


def test_the_summary_table_says_how_many_values_are_missing(tmp_path):
    row = {"task": "t", "method": "m", "settings": "{}", "seed": "0", "ssim": "0.5", "lpips": "0.1", "residual": "1",
           "seconds": "0.1", "nfe": "3"}
    rows = [{**row, "image": "a", "psnr": "20"}, {**row, "image": "b", "psnr": ""}, {**row, "image": "c", "psnr": ""}]
    run = {"model": "m", "images": 3, "seeds": 1, "steps": 5, "sigma_y": 0.05, "batch": 8, "size": 64, "data": "d"}
    write_summary(tmp_path, summarize(rows, run))
    line = next(l for l in (tmp_path / "summary.md").read_text().splitlines() if l.startswith("| m |"))
    assert "| 3 | 20.00 (2 of 3 missing) | 0.500 ± 0.000 |" in line  # the mean of one image, and it says so


def test_a_mask_file_is_the_task_inpaint_for_every_image(setup, tmp_path, capsys):
    _, data, model = setup
    known = torch.ones(32, 32)
    known[8:20, 10:26] = 0
    save_image(known.expand(1, 3, 32, 32) * 2 - 1, tmp_path / "holes.png")
    base = ["eval", "--data", str(data), "--model", str(model), "--device", "cpu", "--limit", "2", "--methods", "dps",
            "--steps", "2", "--no-progress"]
    out = tmp_path / "masked"
    assert main(base + ["--out", str(out), "--mask", str(tmp_path / "holes.png")]) == 0  # the task inpaint alone
    rows = rows_of(out)
    assert {(r["task"], r["method"]) for r in rows} == {("inpaint", "naive"), ("inpaint", "dps")}
    # the naive reconstruction of that mask's measurement, computed here: the same numbers
    from diffprior.commands.common import derive_seed
    from diffprior.io import load_image
    from diffprior.metrics import image_metrics
    from diffprior.operators import Inpaint, measure
    op = Inpaint(known)
    for r in (r for r in rows if r["method"] == "naive"):
        x = load_image(data / r["image"], 32)
        y = measure(op, x, 0.05, torch.Generator().manual_seed(derive_seed("measure", 0, "inpaint", r["image"])))
        assert float(r["psnr"]) == pytest.approx(float(image_metrics(op.naive(y), x)["psnr"][0]), abs=1e-5)
    # another mask is another run: refused in the same folder
    known[0:4] = 0
    save_image(known.expand(1, 3, 32, 32) * 2 - 1, tmp_path / "holes.png")
    assert main(base + ["--out", str(out), "--mask", str(tmp_path / "holes.png")]) == 2
    assert "mask:" in capsys.readouterr().err
    save_image(-torch.ones(1, 3, 32, 32), tmp_path / "black.png")
    for extra, message in ((["--tasks", "inpaint"], "takes its mask from --mask"),
                           (["--tasks", "box-inpaint", "--mask", str(tmp_path / "holes.png")], "add inpaint to --tasks"),
                           (["--mask", str(tmp_path / "black.png")], "marks every pixel missing")):
        assert main(base + ["--out", str(tmp_path / "refused"), *extra]) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "refused").exists()  # no run.json to block the corrected command


def test_a_folder_of_masks_gives_each_image_its_own(setup, tmp_path, capsys):
    _, data, model = setup
    images = sorted(data.glob("img_*.png"))[:3]
    (tmp_path / "masks").mkdir()
    knowns = {}
    for i, p in enumerate(images):  # a hole in another place in each
        known = torch.ones(32, 32)
        known[4 + 6 * i:14 + 6 * i, 2 + 8 * i:12 + 8 * i] = 0
        save_image(known.expand(1, 3, 32, 32) * 2 - 1, tmp_path / "masks" / f"{p.stem}.png")
        knowns[p.name] = known
    out = tmp_path / "per-image"
    assert main(["eval", "--data", str(data), "--model", str(model), "--device", "cpu", "--limit", "3", "--batch", "2",
                 "--methods", "sdedit", "--steps", "2", "--no-progress", "--mask", str(tmp_path / "masks"),
                 "--out", str(out)]) == 0
    from diffprior.commands.common import derive_seed
    from diffprior.io import load_image
    from diffprior.metrics import image_metrics
    from diffprior.operators import Inpaint, measure
    naive = [r for r in rows_of(out) if r["method"] == "naive"]
    assert [r["image"] for r in naive] == [p.name for p in images]
    for r in naive:  # each image's naive reconstruction under its own mask
        op, x = Inpaint(knowns[r["image"]]), load_image(data / r["image"], 32)
        y = measure(op, x, 0.05, torch.Generator().manual_seed(derive_seed("measure", 0, "inpaint", r["image"])))
        assert float(r["psnr"]) == pytest.approx(float(image_metrics(op.naive(y), x)["psnr"][0]), abs=1e-5)
    assert json.loads((out / "run.json").read_text())["identity"]["mask"] == str((tmp_path / "masks").resolve())
    # an image's mask changed in the folder: its rows were made with the old one (this resumed silently)
    save_image(torch.ones(1, 3, 32, 32).index_fill(2, torch.tensor([0, 1]), -1), tmp_path / "masks" / images[1].name)
    run = ["eval", "--data", str(data), "--model", str(model), "--device", "cpu", "--limit", "3", "--batch", "2",
           "--methods", "sdedit", "--steps", "2", "--no-progress", "--mask", str(tmp_path / "masks"), "--out", str(out)]
    assert main(run) == 2
    assert f"holds rows of images whose masks have changed since ({images[1].name})" in capsys.readouterr().err
    save_image(knowns[images[1].name].expand(1, 3, 32, 32) * 2 - 1, tmp_path / "masks" / images[1].name)
    assert main(run) == 0  # put back: the run continues (nothing left to do)


def test_a_mask_of_the_images_own_size_is_cropped_and_resized_as_they_are(tmp_path):
    from diffprior.commands.evaluate import mask_of
    for i in range(2):
        save_image(torch.zeros(1, 3, 32, 48), tmp_path / f"wide_{i}.png")  # 48x32 (W x H)
    known = torch.ones(32, 48)
    known[10:20, 5:40] = 0  # partly outside the central 32x32 square
    save_image(known.expand(1, 3, 32, 48) * 2 - 1, tmp_path / "holes.png")
    images = sorted(tmp_path.glob("wide_*.png"))
    masks = mask_of(tmp_path / "holes.png", images, 32)
    assert list(masks) == ["wide_0.png", "wide_1.png"] and all(torch.equal(m, known[:, 8:40]) for m in masks.values())
    save_image(torch.zeros(1, 3, 40, 48), tmp_path / "wide_2.png")  # another size: its mask must fit it
    with pytest.raises(ValueError, match=r"does not fit: it is 48x32 .* expected the photo's 48x40 or the model's "
                                         r"32x32 \(for the image wide_2.png\)"):  # which photo was not said
        mask_of(tmp_path / "holes.png", sorted(tmp_path.glob("wide_*.png")), 32)
    (tmp_path / "masks").mkdir()
    save_image(known.expand(1, 3, 32, 48) * 2 - 1, tmp_path / "masks" / "wide_0.jpg")
    with pytest.raises(ValueError, match="no mask for 2 of the 3 images, e.g. wide_1.png, wide_2.png"):
        mask_of(tmp_path / "masks", sorted(tmp_path.glob("wide_*.png")), 32)


def test_a_size_the_network_cannot_run_is_refused_before_the_run_is_recorded(setup, tmp_path, capsys):
    _, data, model = setup
    out = tmp_path / "odd"
    assert main(["eval", "--data", str(data), "--out", str(out), "--model", str(model), "--device", "cpu",
                 "--size", "17", "--limit", "2", "--tasks", "box-inpaint", "--methods", "sdedit", "--steps", "2",
                 "--no-progress"]) == 2
    assert "--size 17: the network does not run on 17x17 images" in capsys.readouterr().err
    assert not out.exists()


def test_a_cell_whose_every_row_diverged_fails_the_command(setup, tmp_path, monkeypatch, capsys, diverge):
    """Rows of a diverged batch stay empty and the run goes on; a cell with no row scored exits 1."""
    from diffprior.commands import evaluate as module

    real = diverge(module, "dps")
    _, data, model = setup
    out = tmp_path / "diverged"
    assert main(["eval", "--data", str(data), "--out", str(out), "--model", str(model), "--device", "cpu",
                 "--limit", "2", "--tasks", "box-inpaint", "--methods", "sdedit,dps", "--steps", "2",
                 "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "every row of 1 cell(s) is empty" in err and "box-inpaint / dps" in err and "box-inpaint / sdedit" not in err
    rows = rows_of(out)
    assert [r["psnr"] for r in rows if r["method"] == "dps"] == ["", ""]
    assert all(r["psnr"] for r in rows if r["method"] != "dps")
    assert "| dps | " in (out / "summary.md").read_text() and "| diverged |" in (out / "summary.md").read_text()
    monkeypatch.setattr(module, "solve", real)  # the rerun computes nothing and scores the same way
    assert main(["eval", "--data", str(data), "--out", str(out), "--model", str(model), "--device", "cpu",
                 "--limit", "2", "--tasks", "box-inpaint", "--methods", "sdedit,dps", "--steps", "2",
                 "--no-progress"]) == 1


def test_a_full_disk_leaves_no_torn_row_and_names_the_file(tmp_path):
    """A write that stops short (ENOSPC after part of a row) is cut back off: the file holds whole rows only."""
    import errno
    from diffprior.commands.evaluate import COLUMNS, RowWriter
    path = tmp_path / "rows.csv"
    writer = RowWriter(path)
    row = dict.fromkeys(COLUMNS, "1")
    writer.write([row])
    whole = path.read_bytes()

    class Full:  # the disk fills after 10 more bytes
        def __init__(self, file):
            self.file, self.left = file, 10

        def write(self, data):
            if not self.left:
                raise OSError(errno.ENOSPC, "No space left on device")
            n = self.file.write(data[:self.left])
            self.left -= n
            return n

        def __getattr__(self, name):
            return getattr(self.file, name)
    writer.file = Full(writer.file)
    with pytest.raises(OSError, match=f"No space left on device: '{path}'"):
        writer.write([row, row])
    writer.close()
    assert path.read_bytes() == whole


def test_poisson_noise_measures_each_image_and_gives_the_solvers_its_average_std(setup, tmp_path, monkeypatch,
                                                                                  capsys):
    """--poisson RATE: each image's y is `measure_poisson` with the image's own seed (the naive rows match a
    measurement made here), the solvers get the batch's average Poisson std as sigma_y (restore's at batch 1),
    or --sigma-y when given, and the rate is part of the run's identity."""
    from diffprior.commands.common import derive_seed
    from diffprior.io import load_image
    from diffprior.metrics import image_metrics
    from diffprior.nonlinear import measure_poisson, poisson_sigma_y
    from diffprior.tasks import make_operator
    _, data, model = setup
    given = []
    real_solve = evaluate_module.solve
    monkeypatch.setattr(evaluate_module, "solve", lambda *a, sigma_y, **k: given.append((a[3], sigma_y))
                        or real_solve(*a, sigma_y=sigma_y, **k))
    base = ["eval", "--data", str(data), "--model", str(model), "--device", "cpu", "--limit", "2", "--methods", "dps",
            "--tasks", "random-inpaint", "--steps", "2", "--batch", "1", "--no-progress"]
    out = tmp_path / "poisson"
    assert main(base + ["--out", str(out), "--poisson", "20"]) == 0
    op = make_operator("random-inpaint", (3, 32, 32), seed=0)
    naive = {r["image"]: float(r["psnr"]) for r in rows_of(out) if r["method"] == "naive"}
    for (y_given, sigma_y), name in zip(given, sorted(naive)):
        x = load_image(data / name, 32)
        y = measure_poisson(op, x, 20.0, torch.Generator().manual_seed(derive_seed("measure", 0, "random-inpaint",
                                                                                     name)))
        assert torch.equal(y_given, y)
        assert sigma_y == poisson_sigma_y(y, 20.0) > 0.2  # photon noise of 20 photons: far above 0.05
        assert naive[name] == pytest.approx(float(image_metrics(op.naive(y), x)["psnr"][0]), abs=1e-5)
    assert json.loads((out / "run.json").read_text())["identity"]["poisson"] == 20
    assert "Poisson noise of 20 photons at full brightness" in (out / "summary.md").read_text()
    assert main(base + ["--out", str(out), "--poisson", "30"]) == 2  # another rate is another run
    assert "poisson: 20.0 there, 30.0 now" in capsys.readouterr().err
    assert main(base + ["--out", str(out)]) == 2  # as is Gaussian noise
    given.clear()
    assert main(base + ["--out", str(tmp_path / "given"), "--poisson", "20", "--sigma-y", "0.1"]) == 0
    assert [s for _, s in given] == [0.1, 0.1]
