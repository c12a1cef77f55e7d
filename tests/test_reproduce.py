"""`diffprior reproduce --quick`: every table, figure and REPORT.md from images drawn from the built-in prior,
and a resumed run after a hard kill and an interruption gives the rows of an uninterrupted one."""

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from diffprior.commands import evaluate
from diffprior.cli import build_parser, main
from diffprior.commands.reproduce import budget_settings, make_plan, ours
from diffprior.schedule import Schedule
from diffprior.solvers.diffpir import diffpir_timesteps
from diffprior.solvers.repaint import repaint_nfe

TABLES = ["table1_denoising", "table2_sdedit", "table3_scoreald_dps", "table4_solvers"]
FIGURES = ["fig1_denoising", "fig2_samples", "fig3_sdedit", "fig4_scoreald_dps", "fig5_solvers"]
FOLDERS = ["denoising", "sdedit", "scoreald_dps", "solvers"]



def command(out: Path) -> list[str]:
    return ["reproduce", "--quick", "--data", "generated:3", "--out", str(out), "--device", "cpu", "--no-progress",
            "--model", "gmm-demo"]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("reproduce") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module-scoped: runs before the per-test one-thread fixture
    try:
        assert main(command(out)) == 0
    finally:
        torch.set_num_threads(threads)
    return out


def rows_of(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def numbers(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def test_quick_run_writes_every_table_figure_and_the_report(quick_run):
    out = quick_run
    assert sorted(p.name for p in (out / "generated").glob("*.png")) == [f"sample_{i:05d}.png" for i in range(3)]
    for name in FIGURES:
        with Image.open(out / f"{name}.png") as im:
            assert min(im.size) > 100
    for name in TABLES:
        assert (out / f"{name}.md").read_text().startswith("# Table")
        json.loads((out / f"{name}.json").read_text())

    # the report's numbers stand beside ours
    t1 = json.loads((out / "table1_denoising.json").read_text())
    assert [(r["t"], r["report"]["psnr"], r["report"]["lpips"]) for r in t1["rows"]] == \
        [(100, 31.2, 0.09), (300, 26.1, 0.20), (500, 22.0, 0.35)]
    for r in t1["rows"]:  # the Tweedie estimate beats its noisy input; 3 images give an interval
        assert r["ours"]["psnr"]["mean"] > r["noisy"]["psnr"]["mean"] and r["ours"]["psnr"]["n"] == 3
        assert r["ours"]["psnr"]["ci95"] > 0 and math.isfinite(r["ours"]["lpips"]["mean"])
    t2 = (out / "table2_sdedit.md").read_text()
    assert "PSNR (report)" in t2 and "| box-inpaint | SDEdit t0 = 400 |" in t2 and "| 20.57 |" in t2
    assert "| random-inpaint | TV |" in t2 and "| gaussian-blur | naive |" in t2
    t3 = json.loads((out / "table3_scoreald_dps.json").read_text())
    dps = {r["task"]: r for r in t3["rows"] if r["method"] == "DPS"}
    assert dps["box-inpaint"]["report"] == {"psnr": 31.77, "lpips": 0.05}
    assert dps["box-inpaint"]["ours"]["nfe"]["mean"] == 20

    # table 4: every task, the quick solvers with the baseline, RePaint skipped off inpainting
    t4 = json.loads((out / "table4_solvers.json").read_text())
    ran = {(r["task"], r["method"]) for r in t4["rows"] if not r.get("skipped")}
    for task in ("box-inpaint", "random-inpaint", "gaussian-blur", "motion-blur", "sr4"):
        assert {(task, m) for m in ("naive", "tv", "ddrm", "diffpir")} <= ran
    assert ("box-inpaint", "repaint") in ran
    skipped = {(r["task"], r["method"]): r["reason"] for r in t4["rows"] if r.get("skipped")}
    assert "inpainting only" in skipped["sr4", "repaint"]
    ddrm = next(r for r in t4["rows"] if r["method"] == "ddrm")
    assert ddrm["budget"] == 20 and ddrm["ours"]["nfe"]["mean"] == 20 and ddrm["ours"]["seconds"]["mean"] > 0
    for task in ("box-inpaint", "sr4"):  # each task's rows against its best, paired over the same 3 images
        rows = [r for r in t4["rows"] if r["task"] == task and not r.get("skipped")]
        best = max(rows, key=lambda r: r["ours"]["psnr"]["mean"])
        assert best["ours"]["psnr_vs_best"]["mean"] == 0 and best["ours"]["psnr_vs_best"]["best"].startswith(best["method"])
        for r in rows:
            d = r["ours"]["psnr_vs_best"]
            assert d["n"] == 3 and d["mean"] == pytest.approx(r["ours"]["psnr"]["mean"] - best["ours"]["psnr"]["mean"])
    assert "| PSNR - best (paired) |" in (out / "table4_solvers.md").read_text()
    assert "psnr_vs_best" not in (out / "table1_denoising.json").read_text()  # t = 100 and 500 are not one task
    # the footnote on solvers that backpropagate only where one of them ran (none of the quick ones does)
    assert not any(r.get("backprop") for r in t4["rows"]) and "†" not in (out / "table4_solvers.md").read_text()

    report = (out / "REPORT.md").read_text()
    for text in ("diffprior reproduce", "--quick", "`gmm-demo`, 64x64", "3 images drawn from the prior", "seeds",
                 "What differs from the report", "256x256", "PSNR (report)", "| 31.2 |", "| 22.70 |"):
        assert text in report, text
    for name in FIGURES:
        assert f"]({name}.png)" in report
    for folder in FOLDERS:  # each experiment's rows once each
        rows = rows_of(out / folder / "rows.csv")
        keys = [evaluate.row_key(r) for r in rows]
        assert len(keys) == len(set(keys)) > 0


def test_rerun_resumes_after_a_kill_and_an_interruption(quick_run, monkeypatch):
    out = quick_run
    before = {f: numbers(rows_of(out / f / "rows.csv")) for f in FOLDERS}
    image = out / "generated" / "sample_00002.png"
    pixels = image.read_bytes()

    # a hard kill: table 3 cut after two batches with a torn line, table 4 and 1 partly gone, files lost
    lines = (out / "scoreald_dps" / "rows.csv").read_text().splitlines(keepends=True)
    (out / "scoreald_dps" / "rows.csv").write_text("".join(lines[:7]) + lines[7][:20])
    (out / "solvers" / "rows.csv").unlink()
    lines = (out / "denoising" / "rows.csv").read_text().splitlines(keepends=True)
    (out / "denoising" / "rows.csv").write_text("".join(lines[:4]))
    for f in (image, out / "fig2_samples.png", out / "REPORT.md"):
        f.unlink()

    # then an interruption (Ctrl-C) in the middle of table 3
    calls = []
    run = evaluate.Runner.run

    def interrupted(self, unit):
        calls.append(unit)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return run(self, unit)
    monkeypatch.setattr(evaluate.Runner, "run", interrupted)
    assert main(command(out)) == 130
    assert len(rows_of(out / "scoreald_dps" / "rows.csv")) == 9  # the two batches kept, and the one finished since
    monkeypatch.undo()

    assert main(command(out)) == 0
    assert image.read_bytes() == pixels  # the lost image drawn again, the same
    for f in FOLDERS:
        assert numbers(rows_of(out / f / "rows.csv")) == before[f], f
    assert (out / "REPORT.md").is_file() and (out / "fig2_samples.png").is_file()

    # once finished, a rerun writes no file (it also runs in a read-only folder) and keeps the report's times
    files = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.rglob("*") if p.is_file()}
    assert main(command(out)) == 0
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.rglob("*") if p.is_file()} == files


def test_tables_option_runs_those_tables_only(quick_run, monkeypatch):
    out = quick_run
    before = numbers(rows_of(out / "solvers" / "rows.csv"))
    (out / "fig1_denoising.png").unlink()
    ran = []
    run = evaluate.Runner.run
    monkeypatch.setattr(evaluate.Runner, "run", lambda self, unit: ran.append(unit) or run(self, unit))
    assert main(command(out) + ["--tables", "4"]) == 0
    assert not ran and numbers(rows_of(out / "solvers" / "rows.csv")) == before  # every row was on disk
    assert not (out / "fig1_denoising.png").exists()  # table 1 and its figures did not run
    report = (out / "REPORT.md").read_text()
    assert "--tables 4" in report and "](fig5_solvers.png)" in report
    for name in FIGURES[:-1]:
        assert f"]({name}.png)" not in report
    assert main(command(out)) == 0  # the full command again: the rest of the report, fig. 1 redrawn
    assert all(f"]({name}.png)" in (out / "REPORT.md").read_text() for name in FIGURES)


def test_a_table_cell_that_diverged_everywhere_fails_the_command(tmp_path, monkeypatch, capsys, diverge):
    """The report is still written, the diverged cells marked, and the command exits 1 naming them."""
    real = diverge(evaluate, "dps")
    out = tmp_path / "run"
    assert main(command(out) + ["--tables", "3"]) == 1
    err = capsys.readouterr().err
    assert "the report was written, but every row of" in err and "scoreald_dps: " in err and "/ dps" in err and "/ scoreald" not in err
    table = (out / "table3_scoreald_dps.md").read_text()
    assert (out / "REPORT.md").is_file() and "| box-inpaint | DPS | diverged |" in table
    monkeypatch.setattr(evaluate, "solve", real)  # the rows on disk stay empty: the rerun still fails
    assert main(command(out) + ["--tables", "3"]) == 1


def test_budgets_and_plans():
    for nfe in (20, 100, 1000):
        s = budget_settings("repaint", nfe)
        assert nfe // 2 < repaint_nfe(s["steps"], s["jump_length"], s["jump_n_sample"]) <= nfe
    assert budget_settings("daps", 1000) == {"steps": 200, "ode_steps": 5}
    assert budget_settings("daps", 100) == {"steps": 50, "ode_steps": 2}
    assert budget_settings("sdedit", 1000) == {"steps": 501}
    assert budget_settings("scoreald", 100) == {"steps": 99}  # and its final Tweedie estimate
    assert budget_settings("diffpir", 100) == {"steps": 100}
    assert budget_settings("diffpir", 1000) == {"steps": 1000}  # at most T steps: 750 distinct timesteps
    assert len(diffpir_timesteps(Schedule.linear(), 1000)) == 750
    assert budget_settings("dps", 100) == {"steps": 100} and budget_settings("tv", 100) == {}

    parse = build_parser().parse_args
    quick = make_plan(parse(["reproduce", "--out", "x", "--quick"]))
    assert (quick.n, quick.steps, quick.budgets, quick.seeds) == (4, 20, [20], 1) and "tv" in quick.solvers
    full = make_plan(parse(["reproduce", "--out", "x", "--data", "generated:8"]))
    assert (full.n, full.steps, full.budgets, full.generate) == (8, 1000, [100, 1000], ("ddpm", 1000))
    assert set(full.solvers) == set(evaluate.SOLVERS)
    assert make_plan(parse(["reproduce", "--out", "x", "--solvers", "report"])).solvers == []
    assert make_plan(parse(["reproduce", "--out", "x", "--tables", "1,3"])).solvers == []
    assert make_plan(parse(["reproduce", "--out", "x", "--tables", "4,2,4"])).tables == [2, 4]
    with pytest.raises(ValueError, match="choose from 1, 2, 3, 4"):
        make_plan(parse(["reproduce", "--out", "x", "--tables", "5"]))
    with pytest.raises(ValueError, match="unknown solver"):
        make_plan(parse(["reproduce", "--out", "x", "--solvers", "dps,nope"]))
    with pytest.raises(ValueError, match="runs nothing"):
        make_plan(parse(["reproduce", "--out", "x", "--solvers", "report", "--tables", "4"]))
    with pytest.raises(ValueError, match="generated:N"):
        make_plan(parse(["reproduce", "--out", "x", "--data", "generated:many"]))
    for count in ("0", "1000001"):  # 0 had a message about five options; 100,000,000 started drawing
        with pytest.raises(ValueError, match=f"generated:N draws N images from the prior: N from 1 to 1,000,000, got "
                                             f"{int(count):,}"):
            make_plan(parse(["reproduce", "--out", "x", "--data", f"generated:{count}"]))
    with pytest.raises(ValueError, match="names no solver"):
        make_plan(parse(["reproduce", "--out", "x", "--solvers", ","]))
    assert make_plan(parse(["reproduce", "--out", "x", "--solvers", "dps,dps"])).solvers == ["dps", "tv"]
    with pytest.raises(ValueError, match="--data generated:3 gives the count of images: leave out --limit"):
        make_plan(parse(["reproduce", "--out", "x", "--data", "generated:3", "--limit", "1"]))  # was ignored
    assert make_plan(parse(["reproduce", "--out", "x", "--data", "generated", "--limit", "2"])).n == 2


def test_out_naming_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    assert main(command(tmp_path / "file")) == 2
    assert "is a file" in capsys.readouterr().err


def test_bad_data_or_budgets_leave_no_out_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for extra, message in ((["--data", str(tmp_path / "typo")], "no folder at"),
                           (["--data", str(tmp_path / "empty")], "no readable image"),
                           (["--budgets", "1", "--solvers", "scoreald"], "--budgets 1: scoreald spends at least 2")):
        assert main([*command(tmp_path / "out"), *extra]) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "out").exists()


def test_tables_keep_the_spread_over_seeds_when_there_are_several():
    row = {"task": "t", "method": "m", "settings": "{}", "ssim": "0.5", "lpips": "0.1", "residual": "1",
           "seconds": "0.1", "nfe": "3"}
    rows = [{**row, "image": i, "seed": s, "psnr": v} for i, s, v in (("a", "0", "10"), ("a", "1", "12"),
                                                                    ("b", "0", "20"), ("b", "1", "20"))]
    run = {"model": "m", "images": 2, "seeds": 2, "steps": 5, "sigma_y": 0.05, "batch": 8, "size": 64, "data": "d"}
    psnr = ours(evaluate.summarize(rows, run)["cells"][0])["psnr"]
    assert psnr["seed_sd"] == pytest.approx(1.0) and psnr["seed_means"] == {"0": 15.0, "1": 16.0}
    one_seed = ours(evaluate.summarize([r for r in rows if r["seed"] == "0"], run)["cells"][0])["psnr"]
    assert set(one_seed) == {"mean", "ci95", "n"}
