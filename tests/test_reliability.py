"""Bad input and faults: every one gets one clear line and exit code 2, before any heavy work, and no
existing file is ever destroyed; outputs are written atomically."""

import errno
import hashlib
import json
import os
import struct
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffprior import cli, download
from diffprior.cli import main
from diffprior.data import load_folder
from diffprior.commands.evaluate import readable
from diffprior.io import load_mask, open_image, save_image
from diffprior.checkpoints import CheckpointError, save_checkpoint
from diffprior.models import load_prior
from diffprior.networks import build_network
from diffprior.networks.small import network_config
from diffprior.operators import Operator, measure
from diffprior.tasks import make_operator
from diffprior.schedule import Schedule
from diffprior.solvers import SPECS, DivergenceError, divergence, divergence_hint, solve
from diffprior.solvers import sample as dp_sample



def full_disk(monkeypatch, only: str = "") -> None:
    """From now on, writing a file whose name holds `only` stops half-way with ENOSPC, as on a full disk."""
    real = Path.write_bytes

    def half_then_full(self, data):
        if only not in self.name:
            return real(self, data)
        real(self, data[:len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device", str(self))
    monkeypatch.setattr(Path, "write_bytes", half_then_full)


def bomb_png(path: Path, width: int = 60000, height: int = 60000) -> Path:
    """A tiny PNG whose header claims width x height pixels (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


@pytest.fixture
def files(tmp_path, monkeypatch):
    """A working folder with inputs of every kind, an existing output, and broken files."""
    monkeypatch.chdir(tmp_path)
    prior = load_prior("gmm-demo")
    save_image(prior.sample(1, torch.Generator().manual_seed(5)).float().clamp(-1, 1), tmp_path / "clean.png")
    Image.new("RGB", (256, 256), (120, 60, 30)).save(tmp_path / "big.png")
    Image.new("RGB", (300, 200), (120, 60, 30)).save(tmp_path / "wide.png")
    Image.new("L", (32, 32), 255).save(tmp_path / "mask32.png")
    Image.new("L", (64, 64), 255).save(tmp_path / "white64.png")
    shutil.copy(tmp_path / "clean.png", tmp_path / "-clean.png")
    Image.new("RGB", (16, 16), (1, 2, 3)).save(tmp_path / "existing.png")
    bomb_png(tmp_path / "bomb.png")
    (tmp_path / "folder.zip").mkdir()
    faces = tmp_path / "faces"
    faces.mkdir()
    for i in range(2):
        Image.new("RGB", (12, 12), (40 * i, 80, 120)).save(faces / f"{i:03d}.png")
    with zipfile.ZipFile(tmp_path / "noformat.zip", "w") as z:  # a pack whose faces.json lacks its format
        z.writestr("faces.json", json.dumps({"size": 8, "count": 1, "member": "images.npy"}))
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"identity": {}, "net": {}, "note": os.path.join}, run / "state.pt")  # code: refused
    (run / "model.safetensors").write_bytes(b"")
    (tmp_path / "bogus.pt").write_text("not a checkpoint")
    return tmp_path


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


# (arguments, words the one error line must contain). Each case must fail before any solver, sampler or
# training step runs (those are replaced by a function that fails the test).
BAD = [
    ("restore --input big.png --task sr4 --out big.png", "is the input"),
    ("restore --input big.png --task sr4 --out big.png --overwrite", "is the input"),
    ("restore --input clean.png --task sr4 --out existing.png", "--overwrite"),
    ("restore --input clean.png --task sr4 --out out.txt", "suffix"),
    ("restore -clean.png --task sr4", "a file name that starts with '-' reads as an option: write ./-clean.png"),
    ("restore clean.png --task sr4 --crop -5,0,20", "reads as an option: write --crop=-5,0,20"),
    ("restore clean.png --task sr4 --out -o.png", "reads as an option: write --out=-o.png"),
    ("restore --input clean.png --task sr4 --out out.xbm", "cannot write a colour image to out.xbm"),
    ("denoise --input clean.png --out out.msp", "cannot write a colour image"),
    ("restore --input clean.png --mask white64.png", "marks no pixel missing"),
    ("restore --input clean.png --task sr4 --model run", "is a training run's folder: its model is run/model.safetensors"),
    ("train --data faces --out tr --lr 1e-3 --lr-end 1e-2", "above lr"),
    ("train --data faces --out tr --size 8 --init gmm-demo", "gmm-demo: it is an analytic prior with no network"),
    ("train --data faces --out tr --first 5", "no image files in faces for the selection first 5"),
    ("restore --input clean.png --task sr4 --out existing.png/", "existing.png is a file, not a folder"),
    ("sample --out existing.png/", "existing.png is a file: sample --out FOLDER/ writes a folder"),
    ("restore --input clean.png --task sr4 --out existing.png/x.png", "is a file"),
    ("restore --input clean.png --task sr4 --device cuda:99", "argument --device"),
    ("restore --input clean.png --task sr4 --device tpu", "argument --device"),
    ("restore --input clean.png --task sr4 --device cpu:5", "the CPU is one device"),
    ("restore --input clean.png --task box-inpaint --method sdedit --set t0=2000", "t0=2000"),
    ("restore --input clean.png --task box-inpaint --set scale=abc", "scale='abc'"),
    ("restore --input clean.png --task box-inpaint --set scale=-1", "negative"),
    ("restore --input clean.png --task box-inpaint --set generator=1", "--set generator: dps has no such setting"),
    ("restore --input clean.png --task box-inpaint --set sigma_y=1", "--sigma-y"),
    ("restore --input clean.png --task box-inpaint --set steps=7", "--set steps: use --steps"),
    ("restore --input clean.png --task box-inpaint --sigma-y nan", "finite"),
    ("restore --input clean.png --task box-inpaint --sigma-y -1", "at least 0"),
    ("restore --input clean.png --task box-inpaint --sigma-y 1e30", "at most 10"),  # y would overflow float32
    ("restore --input clean.png --task box-inpaint --samples 0", "--samples"),
    ("restore --input clean.png --task box-inpaint --samples 5000", "--samples: must be at most 1024"),
    ("restore --input clean.png --task box-inpaint --method tv --samples 4", "tv draws nothing at random"),
    ("restore --input clean.png --task box-inpaint --steps 0", "--steps"),
    ("restore --input clean.png --task box-inpaint --steps 5000", "at most the prior's T"),
    ("restore --input clean.png --task inpaint", "needs --mask"),
    ("restore --input clean.png --mask mask32.png", "does not fit"),
    ("restore --input big.png --task sr4 --measured", "16x16"),
    ("restore --input big.png --task sr4 --measured --crop 0,0,8", "big.png cropped is 8x8"),
    ("restore --input big.png --task gaussian-blur --measured", "takes an image of 64x64 pixels"),
    ("restore --input clean.png --task phase-retrieval --measured", "a phase-retrieval measurement is no image"),
    ("restore --input bomb.png --task sr4", "decompression bomb"),
    ("restore --input clean.png --task sr4 --method ddnm --set dps.eta=0.5", "runs ddnm; write its settings as KEY=VALUE"),
    ("restore --input clean.png --task sr4 --method ddnm --set bogus=1", "its settings are eta, travel_length, travel_repeat, clip (and --steps, --sigma-y)"),
    ("restore --input missing.png --task sr4", "no image file"),
    ("denoise --input clean.png --t 2000", "[0, 999]"),
    ("denoise --input clean.png --t -5", "--t"),
    ("denoise --input clean.png --out clean.png --overwrite", "is the input"),
    ("sample --nrow 0", "--nrow"),
    ("sample --n 0", "--n"),
    ("sample --eta 2", "--eta"),
    ("sample --steps 5000", "at most the prior's T"),
    ("sample --out existing.png", "--overwrite"),
    ("demo --tasks box-inpaint,unblur", "unblur"),
    ("demo --out existing.png", "is a file"),
    ("demo --tasks sr4,box-inpaint --methods dps,repaint", "repaint on sr4: inpainting only"),
    ("demo --tasks phase-retrieval", "phase-retrieval has no naive reconstruction"),
    ("sample --eta 0.5", "--eta is the DDIM sampler's"),
    ("sample --model gmm-demo --config ffhq256", "gmm-demo brings its own"),
    ("metrics clean.png wide.png", "aspect ratio"),
    ("metrics clean.png bomb.png", "decompression bomb"),
    ("eval --data faces --out ev --limit 0", "--limit"),
    ("eval --data faces --out ev --batch 0", "--batch"),
    ("eval --data faces --out ev --set dps.scale=abc", "scale='abc'"),
    ("eval --data faces --out ev --tasks box-inpaint,sr4 --methods dps,repaint", "repaint on sr4: inpainting only"),
    ("bench posterior --out bp --seeds 0,x", "argument --seeds: expected a whole number, got 'x'"),
    ("bench posterior --out bp --dims 2,100000", "argument --dims: must be at most 1024"),
    ("bench speed --batch 0", "argument --batch: must be at least 1"),
    ("reproduce --out rep --limit 0", "--limit"),
    ("reproduce --out rep --budgets 10,abc", "--budgets"),
    ("train --data faces --out tr --steps 0", "--steps"),
    ("train --data faces --out tr --ema 1.5", "--ema"),
    ("train --data faces --out tr --ema 1", "--ema"),
    ("train --data faces --out tr --val-first 000001", "give val (--val)"),
    ("reproduce --out rep --data generated:", "generated:N"),
    ("train --data noformat.zip --out tr --steps 1", "not a diffprior face pack"),
    ("train --data faces --out run --size 8 --config tiny --steps 1 --resume", "holds Python objects"),
    ("restore --input clean.png --task sr4 --model bogus.pt", "not diffprior's format"),
    ("restore --input clean.png --task sr4 --model bogus.pt --config ffhq256", "damaged or not a PyTorch file"),
    ("pack faces folder.zip", "is a folder"),
    ("pack faces noformat.zip", "--overwrite"),
    ("pack faces faces.zip --quality 0", "--quality"),
    ("pack faces faces.tar", "a pack is a zip file"),
    ("pack faces faces.zip --format npy --quality 80", "--quality is JPEG's"),
]


def forbidden(*args, **kwargs):
    raise AssertionError("heavy work started before the arguments were checked")


@pytest.mark.parametrize("argv,message", BAD, ids=[a for a, _ in BAD])
def test_bad_input_is_one_clear_line_before_any_work(files, capsys, monkeypatch, argv, message):
    for module in cli.verbs().values():
        for name in ("solve", "sample", "denoise", "load_folder", "save_pack", "posterior_samples"):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, forbidden)
    monkeypatch.setattr("diffprior.train.EpsLoss.noisy_prediction", forbidden)  # every training step
    monkeypatch.setattr("diffprior.uncertainty.posterior_samples", forbidden)
    before = snapshot(files)
    words = argv.split()
    if words[0] in ("restore", "sample", "denoise", "demo") and "--device" not in words:
        words += ["--device", "cpu"]
    try:
        code = main(words)
    except SystemExit as e:  # argparse's own errors
        code = e.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("note:")]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("diffprior") and "Traceback" not in err, err
    assert message in lines[0]
    assert snapshot(files) == before  # nothing written, nothing removed, no temporary file left


def test_an_option_after_an_option_that_takes_a_value_gets_no_hint_to_quote_it(capsys):
    # `--out --overwrite` forgot the file name; `--out=--overwrite` would be no help
    for forgot in (["--out", "--overwrite"], ["--out", "--over"]):
        with pytest.raises(SystemExit):
            main(["restore", "clean.png", *forgot])
        err = capsys.readouterr().err
        assert "argument --out: expected one argument" in err and "reads as an option" not in err


@pytest.mark.parametrize("argv", [["restore", "--input", "missing.png", "--task", "sr4"], ["sample", "--n", "0"]])
def test_the_real_command_exits_2_without_a_traceback(tmp_path, argv):
    done = subprocess.run([sys.executable, "-m", "diffprior", *argv], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_debug_shows_the_traceback(files):
    with pytest.raises(FileNotFoundError):
        main(["restore", "--input", "missing.png", "--task", "sr4", "--device", "cpu", "--debug"])
    with pytest.raises(FileNotFoundError):
        main(["--debug", "restore", "--input", "missing.png", "--task", "sr4", "--device", "cpu"])


# -- outputs: atomic, never an input, overwritten only when asked -------------------------------------
def test_overwriting_is_the_users_choice(files, capsys):
    argv = ["restore", "--input", "clean.png", "--task", "sr4", "--steps", "5", "--out", "r.png", "--device", "cpu",
            "--json"]
    assert main(argv) == 0
    first = snapshot(files)
    assert {"r.png", "r_figure.png"} <= set(first)
    assert main(argv) == 2 and "--overwrite" in capsys.readouterr().err
    assert snapshot(files) == first
    assert main(argv + ["--overwrite", "--seed", "1"]) == 0
    assert snapshot(files)["r.png"] != first["r.png"]


@pytest.mark.parametrize("argv,target", [
    (["sample", "--n", "2", "--steps", "3", "--out", "existing.png"], "existing.png"),
    (["restore", "--input", "clean.png", "--task", "sr4", "--steps", "3", "--out", "existing.png"], "existing.png"),
])
def test_a_full_disk_leaves_the_old_file_whole(files, capsys, monkeypatch, argv, target):
    """The writer fails half-way (as on a full disk): the previous file is intact and nothing is left over."""
    full_disk(monkeypatch)
    before = snapshot(files)
    assert main(argv + ["--overwrite", "--device", "cpu"]) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert snapshot(files) == before


def test_figures_are_written_atomically(tmp_path, monkeypatch):
    from diffprior.figures import image_table
    path = image_table([[torch.zeros(3, 8, 8)]], tmp_path / "f.png")
    old = path.read_bytes()
    full_disk(monkeypatch)
    with pytest.raises(OSError):
        image_table([[torch.ones(3, 8, 8)]], path)
    assert path.read_bytes() == old and os.listdir(tmp_path) == ["f.png"]


def test_a_failed_overwrite_keeps_the_previous_result_whole(files, capsys, monkeypatch):
    """--overwrite, then the disk fills while the figure is written: the earlier image and figure stay as they
    were (the image was deleted, leaving the old figure without it), and the error names the file."""
    run = ["restore", "clean.png", "--model", "gmm-demo", "--task", "sr4", "--method", "tv", "--out", "r.png"]
    assert main(run) == 0
    before = {name: Path(name).read_bytes() for name in ("r.png", "r_figure.png")}
    full_disk(monkeypatch, only="r_figure.png")
    capsys.readouterr()
    assert main([*run, "--overwrite", "--seed", "3"]) == 2
    assert capsys.readouterr().err.strip().endswith("error: No space left on device: r_figure.png")
    assert {name: Path(name).read_bytes() for name in before} == before
    assert not [p.name for p in Path().iterdir() if p.name.startswith(".r")]  # nothing kept or temporary


@pytest.mark.parametrize("suffix, fmt", [(".gif", "GIF"), (".ico", "ICO"), (".jpg", "JPEG")])
def test_a_format_that_changes_the_image_is_said(files, capsys, suffix, fmt):
    """GIF kept 256 colours and ICO at most 256x256 pixels, silently; only JPEG had a note."""
    assert main(["denoise", "clean.png", "--model", "gmm-demo", "--out", f"d{suffix}"]) == 0
    assert f"note: d{suffix}: the {fmt} format does not keep an image exactly" in capsys.readouterr().err
    assert main(["denoise", "clean.png", "--model", "gmm-demo", "--out", "d.png"]) == 0
    assert "note:" not in capsys.readouterr().err


def test_an_output_that_cannot_be_replaced_is_named_not_the_temporary_file(files, capsys, monkeypatch):
    """An immutable output (chattr +i) refuses the rename: the message names it, and nothing is left behind."""
    import diffprior.io

    def refuse(src, dst):
        raise PermissionError(1, "Operation not permitted", src, None, dst)
    monkeypatch.setattr(diffprior.io.os, "replace", refuse)
    assert main(["sample", "--model", "gmm-demo", "--n", "1", "--steps", "2", "--out", "s.png"]) == 2
    assert capsys.readouterr().err.strip().endswith("error: Operation not permitted: s.png")
    assert not any(p.name.startswith(".s.png") for p in Path().iterdir())


@pytest.mark.parametrize("command", [["restore", "clean.png"], ["denoise", "clean.png"], ["sample"], ["demo"],
                                     ["eval", "--data", "x"], ["reproduce", "--data", "x"], ["train", "--data", "x"],
                                     ["bench", "speed"], ["bench", "posterior"]])
def test_an_empty_output_name_is_refused(files, capsys, command):
    """Path("") is the current folder: restore wrote restored.png there, eval its rows."""
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--out", " "])
    assert exit_.value.code == 2 and "argument --out: an empty name" in capsys.readouterr().err
    assert not Path("restored.png").exists()


def test_a_killed_write_leaves_no_temporary_file_behind_the_next(tmp_path):
    """SIGKILL skips the cleanup of a write in progress: the next write of that file removes its leftover, but
    not the live temporary file of another process writing it now, nor anything not named as it names them."""
    from diffprior.io import atomic_write
    for name in (".out.png.abc12345.tmp", ".out.png.live1234.tmp", ".other.png.abc12345.tmp", ".out.png.mine.tmp"):
        (tmp_path / name).write_bytes(b"half")
    for name in (".out.png.abc12345.tmp", ".other.png.abc12345.tmp", ".out.png.mine.tmp"):  # two hours old
        os.utime(tmp_path / name, (time.time() - 7200,) * 2)
    atomic_write(tmp_path / "out.png", lambda tmp: Path(tmp).write_bytes(b"whole"))
    assert sorted(os.listdir(tmp_path)) == [".other.png.abc12345.tmp", ".out.png.live1234.tmp", ".out.png.mine.tmp",
                                            "out.png"]


def test_concurrent_writes_of_one_file_all_succeed(tmp_path):
    """Threads saving the same file: each write lands whole, none deletes another's temporary file."""
    image, errors = torch.rand(1, 3, 64, 64) * 2 - 1, []

    def save():
        try:
            for _ in range(10):
                save_image(image, tmp_path / "race.png")
        except Exception as e:  # noqa: BLE001 - collected and asserted below
            errors.append(e)
    threads = [threading.Thread(target=save) for _ in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert errors == [] and os.listdir(tmp_path) == ["race.png"]


def test_the_command_line_imports_torch_inside_its_error_handling():
    """Ctrl-C during the first seconds (importing torch) is one line too: neither the package nor the CLI
    module imports torch before `main` runs; `diffprior.solve` and the rest still resolve."""
    code = ("import sys, diffprior, diffprior.cli; assert 'torch' not in sys.modules; "
            "assert callable(diffprior.solve) and 'torch' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_submodules_resolve_on_first_use():
    """`dp.io.load_image(...)` (the README's) works in a fresh process, before anything else imported diffprior.io."""
    code = ("import diffprior as dp; assert callable(dp.io.load_image) and callable(dp.metrics.psnr) "
            "and callable(dp.solvers.dps); import pytest\n"
            "with pytest.raises(AttributeError, match='no attribute'): dp.nothing")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_sigterm_is_an_interruption_of_one_line(tmp_path):
    """`kill` (or a job scheduler) stops a command as Ctrl-C does: one line, exit 130, no temporary files."""
    proc = subprocess.Popen([sys.executable, "-m", "diffprior", "sample", "--model", "gmm-demo", "--n", "64",
                             "--steps", "1000", "--device", "cpu", "--out", str(tmp_path / "s.png")],
                            stderr=subprocess.PIPE, text=True)
    time.sleep(4)  # past the imports, into the sampling
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err.strip().splitlines()[-1].endswith("interrupted (SIGTERM)"), err
    assert os.listdir(tmp_path) == []


def test_sigterm_stops_the_demos_runs_side_by_side(tmp_path):
    """The demo's runs go side by side on worker threads: stopped, it ends them too (a thread left running into
    the interpreter's exit aborted the process with a C++ message) and writes nothing."""
    proc = subprocess.Popen([sys.executable, "-m", "diffprior", "demo", "--model", "gmm-demo", "--steps", "1000",
                             "--tasks", "box-inpaint,random-inpaint,gaussian-blur,sr4", "--methods", "dps,scoreald",
                             "--threads", "2", "--device", "cpu", "--out", str(tmp_path / "demo")],
                            stderr=subprocess.PIPE, text=True)
    time.sleep(6)  # past the imports, into the runs (8 of 1000 steps: about 30 s on 2 cores)
    assert proc.poll() is None, "the demo ended before it could be stopped"
    proc.send_signal(signal.SIGTERM)
    start = time.monotonic()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err.strip().splitlines()[-1].endswith("interrupted (SIGTERM)"), err
    assert "terminate called" not in err and time.monotonic() - start < 10
    assert not (tmp_path / "demo").exists() or not any((tmp_path / "demo").iterdir())


def test_read_only_folder_is_refused_before_work(files, capsys, monkeypatch):
    ro = files / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    if os.geteuid() == 0:  # root may write anywhere: let the folder answer as it would to anyone else
        temporary = tempfile.TemporaryFile

        def refuse(*a, dir=None, **k):
            if Path(dir) == ro:
                raise PermissionError(13, "Permission denied")
            return temporary(*a, dir=dir, **k)
        monkeypatch.setattr(tempfile, "TemporaryFile", refuse)
    try:
        assert main(["sample", "--out", str(ro / "s.png"), "--device", "cpu"]) == 2
        assert "not writable" in capsys.readouterr().err
    finally:
        ro.chmod(0o755)


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="no /proc on this system")
@pytest.mark.parametrize("out, command", [("/proc/s.png", ["sample", "--model", "gmm-demo"]),
                                          ("/proc/demo", ["demo", "--model", "gmm-demo"]),
                                          ("/proc/eval", ["eval", "--data", "faces", "--model", "gmm-demo"]),
                                          ("/proc/train", ["train", "--data", "faces", "--config", "tiny"])])
def test_a_folder_no_file_can_be_made_in_is_refused_before_work(files, out, command, capsys):
    # /proc passes os.access for root, but no file can be created there; commands that write a folder check too
    assert main([*command, "--out", out, "--device", "cpu"]) == 2
    assert f"cannot write {out}: the folder /proc is not writable" in capsys.readouterr().err


# -- files that are not what they claim ------------------------------------------------------------------
def test_decompression_bombs_are_refused_and_skipped(tmp_path):
    bomb = bomb_png(tmp_path / "a_bomb.png")
    bomb_png(tmp_path / "b_just_over.png", 10_000, 10_000)  # over MAX_IMAGE_PIXELS, under twice it
    Image.new("RGB", (16, 16)).save(tmp_path / "c_good.png")
    with pytest.raises(ValueError, match="decompression bomb"):
        open_image(bomb)
    good, bad = readable(sorted(tmp_path.iterdir()))  # what eval and reproduce read
    assert [p.name for p in good] == ["c_good.png"] and [p.name for p, _ in bad] == ["a_bomb.png", "b_just_over.png"]
    with pytest.warns(UserWarning, match="skipped 2"):
        faces = load_folder(tmp_path, 8)  # what pack and train read
    assert faces.names == ["c_good.png"] and len(faces.skipped) == 2


def test_pack_into_a_folder_is_refused_and_leaves_nothing(files, capsys):
    before = snapshot(files)
    assert main(["pack", "faces", "folder.zip"]) == 2
    assert snapshot(files) == before
    assert main(["pack", "faces", "faces.zip", "--size", "8", "--format", "npy"]) == 0
    assert [p.name for p in files.iterdir() if p.name.startswith(".")] == []


def test_checkpoint_description_is_checked_against_the_weights_before_building(tmp_path):
    net = build_network("small-unet", **network_config("tiny"))
    config = {"architecture": "small-unet", "network": net.config, "schedule": Schedule.linear().config,
              "image_size": 16, "channels": 3}
    path = save_checkpoint(net, config, tmp_path / "m.safetensors")
    huge = {**config, "network": {**net.config, "base": 1_000_000}}  # would need terabytes
    path.with_suffix(".json").write_text(json.dumps(huge))
    with pytest.raises(CheckpointError, match="does not fit"):
        load_prior(path)
    path.with_suffix(".json").write_text(json.dumps({**config, "image_size": 10 ** 9}))
    with pytest.raises(CheckpointError, match="image_size"):
        load_prior(path)


def test_cached_download_is_hashed_once(tmp_path, monkeypatch):
    content = b"weights" * 100
    good = hashlib.sha256(content).hexdigest()
    dest = tmp_path / "m.bin"
    dest.write_bytes(b"x" * len(content))  # the right size, the wrong content
    with pytest.raises(download.ChecksumError, match="sha256"):
        download.fetch("http://127.0.0.1:9/m.bin", dest, size=len(content), sha256=good, offline=True)
    assert dest.is_file()  # a file the user placed is never deleted
    dest.write_bytes(content)
    calls = []
    real = download.sha256_of
    monkeypatch.setattr(download, "sha256_of", lambda p: calls.append(p) or real(p))
    for _ in range(3):
        assert download.fetch("http://127.0.0.1:9/m.bin", dest, size=len(content), sha256=good, offline=True) == dest
    assert len(calls) == 1  # verified once, then remembered
    os.utime(dest, ns=(0, 0))  # the file changed (as far as anyone can tell): checked again
    download.fetch("http://127.0.0.1:9/m.bin", dest, size=len(content), sha256=good, offline=True)
    assert len(calls) == 2


# -- silently wrong before -------------------------------------------------------------------------------
def test_divergence_is_detected_by_range_and_by_residual():
    prior = load_prior("gmm-demo")
    x = prior.sample(1, torch.Generator().manual_seed(0)).float()
    op = make_operator("box-inpaint", x.shape[1:], seed=0)
    y = measure(op, x, 0.05, torch.Generator().manual_seed(0))
    assert divergence(op, x, y) is None
    assert "non-finite" in divergence(op, torch.full_like(x, float("nan")), y)
    assert "outside" in divergence(op, torch.full_like(x, 1e4), y)
    assert "outside" in divergence(op, torch.full_like(x, 20.0), y)  # no image reaches 20 (it passed up to 100)

    class Gain(Operator):  # an operator of the user's with a large gain: in range, yet far from y
        def A(self, x):
            return 1000 * x
    assert "residual" in divergence(Gain(), torch.full_like(x, 0.5), torch.zeros_like(x))
    with pytest.raises(DivergenceError, match=r"lower its step size \(scale\) or use more steps$"):
        solve("dps", prior, op, y, sigma_y=0.05, steps=10, scale=1e30, generator=torch.Generator().manual_seed(1))


def test_the_divergence_hint_names_only_the_solvers_own_settings():
    """pigdm, which has no step size, was told to lower "scale / step_size / lr"."""
    assert divergence_hint(SPECS["pigdm"]) == "use more steps or a larger sigma_y"
    assert divergence_hint(SPECS["scoreald"]) == "lower its step size (step_size / gamma_scale) or use more steps"
    assert divergence_hint(SPECS["daps"]) == "lower its step size (lr) or use more steps"
    assert divergence_hint(SPECS["repaint"]) == "use more steps"


def test_metrics_of_large_images_say_what_they_cost(files, capsys, monkeypatch):
    """A 5000x5000 pair ran for minutes and gigabytes without a word."""
    from diffprior.commands import metrics
    monkeypatch.setattr(metrics, "LARGE", 100 * 100)
    Image.open(files / "big.png").resize((101, 100)).save(files / "large.png")
    assert main(["metrics", "large.png", "large.png"]) == 0
    assert "note: scoring 101x100 images at full size (0.0 megapixels): LPIPS on a CPU needs" in capsys.readouterr().err
    assert main(["metrics", "clean.png", "clean.png"]) == 0
    assert "note" not in capsys.readouterr().err


def test_metrics_do_not_depend_on_the_order(files, capsys):
    Image.open(files / "big.png").resize((128, 128)).rotate(10).save(files / "half.png")
    scores = []
    for a, b in (("big.png", "half.png"), ("half.png", "big.png")):
        assert main(["metrics", a, b, "--json"]) == 0
        scores.append(json.loads(capsys.readouterr().out))
    assert scores[0] == pytest.approx(scores[1], abs=1e-4)


# -- documented, and now usable from the command line ------------------------------------------------------
def test_a_mask_drawn_on_the_photo_follows_its_crop_and_resize(tmp_path):
    mask = Image.new("L", (300, 200), 255)
    mask.paste(0, (100, 50, 200, 150))  # a hole at the centre of the photo
    mask.save(tmp_path / "m.png")
    m = load_mask(tmp_path / "m.png", (64, 64), photo_size=(300, 200))
    # the central 200x200 square holds the hole at (50..150, 50..150): a quarter to three quarters
    assert m.shape == (64, 64) and m[16:48, 16:48].sum() == 0 and m.sum() == 64 * 64 - 32 * 32
    with pytest.raises(ValueError, match="300x200"):
        load_mask(tmp_path / "m.png", (64, 64), photo_size=(256, 256))


@pytest.mark.parametrize("argv", [
    ["--input", "big.png", "--mask", "m256.png", "--measured"],
    ["--input", "big.png", "--mask", "m256.png"],
    ["--input", "big.png", "--task", "colorize", "--measured"],
    ["--input", "grey.png", "--task", "colorize", "--measured"],
    ["--input", "small.png", "--task", "sr4", "--measured"],
])
def test_measured_inputs_documented_in_the_readme_work(files, capsys, argv):
    mask = Image.new("L", (256, 256), 255)
    mask.paste(0, (64, 64, 192, 192))
    mask.save(files / "m256.png")
    Image.new("L", (300, 300), 90).save(files / "grey.png")
    Image.new("RGB", (16, 16), (90, 30, 200)).save(files / "small.png")
    assert main(["restore", *argv, "--steps", "5", "--out", "o.png", "--device", "cpu", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["restored"]["residual"] is not None
    assert Image.open(files / "o.png").size == (64, 64)


def test_full_size_fills_the_holes_of_the_photo_itself(files, capsys):
    photo = np.asarray(Image.open(files / "wide.png").convert("RGB"))  # 300x200
    mask = Image.new("L", (300, 200), 255)
    mask.paste(0, (120, 60, 180, 120))  # a hole inside the central 200x200 square
    mask.save(files / "m.png")
    argv = ["restore", "--input", "wide.png", "--mask", "m.png", "--measured", "--steps", "5", "--device", "cpu"]
    assert main([*argv, "--full-size", "--out", "o.png", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["written_size"] == [300, 200]
    out, known = np.asarray(Image.open(files / "o.png")), np.asarray(mask) > 0
    assert out.shape == (200, 300, 3) and np.array_equal(out[known], photo[known])  # the rest as it was
    assert np.abs(out[~known].astype(int) - photo[~known]).max() > 10  # the hole from the restoration
    assert main([*argv, "--full-size", "--samples", "2", "--out", "s.png"]) == 0  # the std map too, at that size
    std = np.asarray(Image.open(files / "s_std.png").convert("L"))
    assert std.shape == (200, 300) and std[known].max() == 0 and std[~known].mean() > 10
    mask.paste(0, (10, 10, 20, 20))  # a hole the model never sees: refused before any run
    mask.save(files / "m.png")
    assert main([*argv, "--full-size", "--out", "o2.png"]) == 2
    assert "100 missing pixels outside the photo's central 200x200 square" in capsys.readouterr().err
    assert not (files / "o2.png").exists()
    # --crop picks the square the model sees: one around the corner hole misses the central one ...
    assert main([*argv, "--full-size", "--crop", "0,0,100", "--out", "o2.png"]) == 2
    assert "3600 missing pixels outside the cropped 100x100 square" in capsys.readouterr().err
    corner = Image.new("L", (300, 200), 255)
    corner.paste(0, (10, 10, 20, 20))
    corner.save(files / "corner.png")
    argv[argv.index("m.png")] = "corner.png"  # ... and fills the corner hole of a mask that has only that one
    assert main([*argv, "--full-size", "--crop", "0,0,100", "--out", "o2.png"]) == 0
    out, known = np.asarray(Image.open(files / "o2.png")), np.asarray(corner) > 0
    assert out.shape == (200, 300, 3) and np.array_equal(out[known], photo[known])
    assert np.abs(out[~known].astype(int) - photo[~known]).max() > 10
    assert main([*argv, "--crop", "250,0,100", "--out", "o4.png"]) == 2
    assert "the crop 250,0,100 (LEFT,TOP,SIDE) reaches beyond the 300x200 photo" in capsys.readouterr().err
    assert main(["restore", "--input", "wide.png", "--task", "sr4", "--full-size", "--out", "o3.png"]) == 2
    assert "--full-size fills the holes of a --mask" in capsys.readouterr().err
    assert main([*argv, "--full-size", "--crop", "0,0,100", "--out", "o5.jpg"]) == 0  # a JPEG: said, and close
    assert "note: o5.jpg: the JPEG format does not keep an image exactly" in capsys.readouterr().err
    out = np.asarray(Image.open(files / "o5.jpg")).astype(int)
    assert np.abs(out[known] - photo[known]).mean() < 1.5  # quality 95, full colour resolution


def test_torchrun_passes_every_eval_and_reproduce_option_through():
    """torchrun's own parser takes an abbreviation of its options (as --n was) for itself."""
    run = pytest.importorskip("torch.distributed.run")
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    for command in ("eval", "reproduce"):
        options = [s for a in sub[command]._actions for s in a.option_strings if s.startswith("--")]
        for option in options:
            argv = [command, option, "1"]
            args = run.get_args_parser().parse_args(["--nproc-per-node", "2", "-m", "diffprior", *argv])
            assert args.training_script_args == argv, option


# -- the Python API's bad inputs: a clear error (or a warning) before any work, never a traceback from inside ----
@pytest.fixture(scope="module")
def small_problem():
    prior = load_prior("gmm-demo")
    x = torch.rand(1, *prior.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    op = make_operator("box-inpaint", prior.shape, seed=0)
    return prior, op, x, measure(op, x, 0.05, torch.Generator().manual_seed(1))


def test_operators_of_a_users_own_that_cannot_work_are_refused_saying_why(small_problem):
    from diffprior.operators import LinearOperator, Operator
    prior, op, x, y = small_problem

    class Mean(LinearOperator):  # one number per image, as (B,)
        name = "mean"

        def A(self, x):
            return x.flatten(1).mean(1)

        def A_adjoint(self, y):
            return (y / 12288)[:, None, None, None].expand(-1, 3, 64, 64)
    with pytest.raises(ValueError, match=r"\(B, 1\) for one number"):
        solve("dps", prior, Mean(), measure(Mean(), x, 0.01), steps=2)

    class Forward(Operator):  # forward instead of A, as torch modules do
        name = "forward-only"

        def forward(self, x):
            return x[..., ::2]
    with pytest.raises(NotImplementedError, match="Forward does not define A"):
        measure(Forward(), x, 0.05)
    with pytest.raises(ValueError, match="Forward does not define A"):
        solve("dps", prior, Forward(), y, steps=2)

    class NoInit(LinearOperator):
        def __init__(self):
            self.step = 2

        def A(self, x):
            return x
    with pytest.raises(TypeError, match=r"NoInit.__init__ must call super\(\).__init__\(\)"):
        solve("dps", prior, NoInit(), y, steps=2)


def test_measurements_images_and_starts_of_the_wrong_kind_are_refused(small_problem):
    prior, op, x, y = small_problem
    with pytest.raises(ValueError, match=r"makes a batch \(B, 3, 64, 64\)$"):  # no advice to add a dimension
        solve("dps", prior, op, y[None], steps=2)
    with pytest.raises(ValueError, match=r"add the batch dimension \(x\[None\]\)"):
        measure(op, x[0], 0.05)
    with pytest.raises(ValueError, match="init contains NaN"):
        solve("sdedit", prior, op, y, steps=2, init=x * float("nan"))
    with pytest.warns(UserWarning, match=r"init reaches 25.*not \[0, 255\]"), pytest.raises(DivergenceError):
        solve("sdedit", prior, op, y, steps=2, t0=10, init=(x + 1) * 127.5)  # warned first: then it diverges
    with pytest.raises(TypeError, match=r"load it with dp.load_prior"):
        dp_sample("gmm-demo", 1, steps=2)
    with pytest.raises(ValueError, match="eta="):
        dp_sample(prior, 1, steps=2, sampler="ddim", eta="0.5")
    assert dp_sample(prior, 1, steps=np.int64(2)).shape == (1, *prior.shape)  # NumPy numbers are numbers
    assert measure(op, x, np.float32(0.05)).shape == y.shape
    solve("ddrm", prior, op, y, sigma_y=np.float32(0.05), steps=2)


def test_extreme_settings_end_as_a_divergence_not_an_arithmetic_error(small_problem):
    prior, op, x, y = small_problem
    with pytest.raises(DivergenceError, match="too extreme"):
        solve("daps", prior, op, y, sigma_y=1e-170, steps=2, ode_steps=1, langevin_steps=2)


def test_helpers_check_their_own_arguments(small_problem, tmp_path):
    from diffprior.io import load_image
    from diffprior.metrics import psnr
    from diffprior.uncertainty import calibration, posterior_samples
    prior, op, x, y = small_problem
    samples = posterior_samples("sdedit", prior, op, y, 5, batch=2, steps=2, t0=10, init=x)  # 3 calls: 2, 2, 1
    assert samples.shape == (5, *prior.shape)
    with pytest.raises(ValueError, match="batch=0"):
        posterior_samples("sdedit", prior, op, y, 5, batch=0, steps=2)
    with pytest.raises(ValueError, match="bins=2.5"):
        calibration(x, x.abs(), x, bins=2.5)
    with pytest.warns(UserWarning, match=r"not \[0, 255\]"):
        psnr((x + 1) * 127.5, (x + 1) * 127.5)
    save_image(x, tmp_path / "face.png")
    with pytest.raises(ValueError, match="^alpha must be"):  # the argument is wrong, not the file
        load_image(tmp_path / "face.png", alpha="red")
    (tmp_path / "folder.png").mkdir()
    with pytest.raises(IsADirectoryError, match="folder.png is a folder"):
        save_image(x, tmp_path / "folder.png")


def test_threads_beyond_what_helps_are_refused(files, capsys):
    """torch.set_num_threads(100000) crashes the process: the option stops at 4 threads a core."""
    with pytest.raises(SystemExit) as exit_:
        main(["sample", "--model", "gmm-demo", "--n", "1", "--steps", "2", "--out", "s.png", "--threads", "100000"])
    assert exit_.value.code == 2 and "--threads: must be at most" in capsys.readouterr().err


@pytest.mark.parametrize("text", ["[1, 2]", "not json", "\xff"])
def test_a_damaged_run_record_is_named_not_an_internal_error(files, capsys, text):
    Path("samples").mkdir()
    Path("samples/samples.json").write_bytes(text.encode("latin-1"))
    assert main(["sample", "--model", "gmm-demo", "--n", "2", "--steps", "2", "--out", "samples/"]) == 2
    assert "samples/samples.json is not a record this command wrote" in capsys.readouterr().err
    Path("eval").mkdir()
    Path("eval/run.json").write_bytes(text.encode("latin-1"))
    assert main(["eval", "--model", "gmm-demo", "--data", "faces", "--steps", "2", "--tasks", "denoise",
                 "--methods", "dps", "--out", "eval"]) == 2
    assert "eval/run.json is not a record this command wrote" in capsys.readouterr().err


def test_an_edited_row_file_is_named_with_the_row(tmp_path):
    from diffprior.commands.evaluate import COLUMNS, read_rows
    row = {c: "" for c in COLUMNS} | {"image": "a.png", "task": "sr4", "method": "dps", "psnr": "abc"}
    (tmp_path / "rows.csv").write_text(",".join(COLUMNS) + "\n" + ",".join(row[c] for c in COLUMNS) + "\n")
    with pytest.raises(ValueError, match=r"rows.csv: psnr 'abc' of a.png, sr4, dps is not a number"):
        read_rows(tmp_path / "rows.csv")


def test_a_folder_or_file_of_the_wrong_kind_is_named_as_such(files, capsys):
    Path("nested/inner").mkdir(parents=True)
    Image.new("RGB", (16, 16)).save("nested/inner/a.png")
    assert main(["metrics", "clean.png", "nested"]) == 2
    assert "error: nested is a folder: give an image file" in capsys.readouterr().err  # it said "no image file"
    assert main(["pack", "clean.png", "p.zip"]) == 2
    assert "error: clean.png is a file: pack reads a folder of images" in capsys.readouterr().err
    assert main(["pack", "nested", "p.zip"]) == 2
    assert "no image files in nested (images directly in it; subfolders are not read)" in capsys.readouterr().err


def test_masks_that_leave_nothing_to_restore_say_why(files, capsys):
    """A line thinner than one model pixel vanished at 64x64 and was called "marks no pixel missing"; holes only
    outside the square (with --full-size) were said to be no holes; an all-black mask was not named."""
    photo = np.full((200, 200), 255, np.uint8)
    thin = photo.copy()
    thin[100, 40:160] = 0
    Image.fromarray(thin).save("thin.png")
    Image.new("RGB", (200, 200), (90, 120, 150)).save("photo.png")
    run = ["restore", "photo.png", "--model", "gmm-demo", "--steps", "2", "--out", "r.png"]
    assert main([*run, "--mask", "thin.png"]) == 2
    assert ("mask thin.png marks 120 pixels missing in the square the model sees, but none remains at the model's "
            "64x64: holes thinner than one of its pixels (3.12 photo pixels) vanish") in capsys.readouterr().err
    outside = np.full((200, 300), 255, np.uint8)
    outside[:, :20] = 0  # left of the central 200x200 square of a 300x200 photo
    Image.fromarray(outside).save("outside.png")
    Image.new("RGB", (300, 200), (90, 120, 150)).save("wide2.png")
    assert main([*run[:1], "wide2.png", *run[2:], "--mask", "outside.png", "--full-size"]) == 2
    assert "the mask has 4000 missing pixels outside the photo's central 200x200 square" in capsys.readouterr().err
    Image.new("L", (200, 200), 0).save("black.png")
    assert main([*run, "--mask", "black.png"]) == 2
    assert "mask black.png marks every pixel missing in the square the model sees" in capsys.readouterr().err
    assert main(["restore", "", "--task", "sr4"]) == 2
    assert "error: an empty file name: give an image file" in capsys.readouterr().err  # it said ". is a folder"


def test_full_size_says_what_an_8_bit_result_loses(files, capsys):
    """--full-size keeps the observed pixels as the model reads the photo (8-bit RGB): a 16-bit or transparent
    photo's depth or alpha is not kept, and that is said."""
    mask = np.full((64, 64), 255, np.uint8)
    mask[20:40, 20:40] = 0
    Image.fromarray(mask).save("m64.png")
    Image.fromarray(np.full((64, 64), 40000, np.uint16)).save("deep.png")
    Image.new("RGBA", (64, 64), (90, 120, 150, 0)).save("clear.png")
    run = ["--model", "gmm-demo", "--steps", "2", "--mask", "m64.png", "--full-size", "--method", "tv"]
    assert main(["restore", "deep.png", *run, "--out", "d.png"]) == 0
    assert "note: deep.png has 16-bit depth; the full-size result is 8-bit RGB" in capsys.readouterr().err
    assert main(["restore", "clear.png", *run, "--out", "c.png"]) == 0
    assert "note: clear.png has transparency; the full-size result is 8-bit RGB (transparent pixels on white)" \
        in capsys.readouterr().err
    assert main(["restore", "clean.png", *run, "--out", "e.png"]) == 0
    assert "note:" not in capsys.readouterr().err


def test_a_training_or_reproduce_folder_in_use_by_another_process_is_refused(tmp_path, capsys):
    """The same long run started twice: the second process is refused before it reads or writes anything, and
    the folder is free again once the first has ended."""
    from diffprior.io import folder_lock
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom diffprior.io import folder_lock\n"
                               "with folder_lock(sys.argv[1], 'a test'):\n    print('held', flush=True)\n"
                               "    time.sleep(60)", str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        for argv in (["train", "--data", str(tmp_path / "no-such-data"), "--out", str(run), "--resume"],
                     ["reproduce", "--data", "generated:2", "--out", str(run), "--device", "cpu"]):
            assert main(argv) == 2
            assert f"{run} is in use: another process is writing a" in capsys.readouterr().err
        assert list(run.iterdir()) == []
    finally:
        holder.kill()
        holder.wait()
    with folder_lock(run, "a test"):  # released by the process's end, however it ended
        with folder_lock(tmp_path / "not-yet-made", "a test"):  # nothing to lock yet: no check
            pass


@pytest.mark.parametrize("failure", [
    RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1204800 vs 1204688"),  # torch.save
    RuntimeError("basic_ios::clear: iostream error"),  # torch.save, at the end of the file
    type("SafetensorError", (Exception,), {})(  # safetensors' own error type
        "Error while serializing: I/O error: No space left on device (os error 28)"),
])
def test_a_write_that_fails_in_a_writers_own_error_names_the_file_and_the_free_space(tmp_path, failure):
    """torch.save and safetensors report a full disk in their own errors, without an errno; the old file stays,
    no temporary file is left, and the error (an OSError: a user's error, not an internal one) names the file."""
    from diffprior.io import atomic_write
    target = tmp_path / "state.pt"
    target.write_bytes(b"the previous checkpoint")

    def short(tmp):
        Path(tmp).write_bytes(b"partial")
        raise failure
    with pytest.raises(OSError, match=f"cannot write {target}: the write stopped short, with [0-9,]+ bytes free"):
        atomic_write(target, short)
    assert target.read_bytes() == b"the previous checkpoint" and list(tmp_path.iterdir()) == [target]
    with pytest.raises(RuntimeError, match="something else"):  # other errors as they are
        atomic_write(target, lambda tmp: (_ for _ in ()).throw(RuntimeError("something else")))


def test_odd_inputs_to_measure_denoise_and_solve_get_clear_errors_or_work():
    """Found by probing the Python API: each of these was a bare PyTorch error or a misleading message."""
    import numpy as np
    from diffprior.operators import Inpaint
    from diffprior.solvers import denoise
    prior = load_prior("gmm-demo")
    x = prior.sample(3, torch.Generator().manual_seed(0)).float()
    three = Inpaint(torch.ones(3, 1, 64, 64))  # one mask per image of a batch of 3
    with pytest.raises(ValueError, match=r"inpaint does not take images of shape \(2, 3, 64, 64\)"):
        measure(three, x[:2], 0.05)
    with pytest.raises(ValueError, match="inpaint makes 3 measurements from a batch of 1 images"):
        measure(three, x[:1], 0.05)  # was silently broadcast to three measurements
    assert measure(three, x, np.array(0.05)).shape == x.shape  # a 0-d NumPy sigma_y
    with pytest.raises(ValueError, match="x0 holds no images"):
        denoise(prior, x[:0], 300)
    t8 = torch.tensor(44, dtype=torch.uint8)  # indexing with uint8 reads it as a mask
    torch.testing.assert_close(denoise(prior, x[:1], t8, generator=torch.Generator().manual_seed(1))[1],
                               denoise(prior, x[:1], 44, generator=torch.Generator().manual_seed(1))[1])
    y = measure(three, x, 0.05)
    with pytest.raises(ValueError, match="on the meta device: it holds no values"):  # not "move it to the prior"
        solve("dps", prior, three, y.to("meta"), steps=2)
    with pytest.raises(TypeError, match="got numpy.random._generator.Generator"):  # not just "Generator"
        solve("dps", prior, three, y, steps=2, generator=np.random.default_rng(0))


def test_a_folder_that_cannot_be_written_is_named_by_the_file_asked_for(tmp_path, monkeypatch):
    import tempfile
    from diffprior.io import atomic_write

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / ".summary.md.abcdefgh.tmp"))
    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(OSError, match=f"Read-only file system: '{tmp_path / 'summary.md'}'"):
        atomic_write(tmp_path / "summary.md", lambda tmp: None)


def test_an_evaluations_two_summaries_are_written_as_one(tmp_path, monkeypatch):
    """A full disk at summary.json leaves summary.md as it was (it said 3 images beside a json of 2)."""
    from diffprior.commands import evaluate
    summary = {"run": {"model": "m", "images": 2, "seeds": 1, "steps": 3, "sigma_y": 0.05, "batch": 1, "size": 64,
                       "data": "d"}, "ci": "mean", "cells": []}
    evaluate.write_summary(tmp_path, summary)
    before = {p: p.read_bytes() for p in tmp_path.iterdir()}
    full_disk(monkeypatch, only="summary.json")
    with pytest.raises(OSError, match="No space left on device"):
        evaluate.write_summary(tmp_path, {**summary, "run": {**summary["run"], "images": 3}})
    assert {p: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_a_failed_write_leaves_no_folder_of_its_own_and_an_unchanged_file_is_not_rewritten(tmp_path, monkeypatch):
    """demo on a full disk left an empty output folder; a finished run reread rewrote its files (and so failed in a
    read-only folder)."""
    from diffprior.io import write_bytes, write_text
    (tmp_path / "kept").mkdir()
    full_disk(monkeypatch)
    for path in (tmp_path / "new" / "deeper" / "demo.png", tmp_path / "kept" / "demo.png"):
        with pytest.raises(OSError, match="No space left on device"):
            write_bytes(path, b"a figure")
    assert [p.name for p in tmp_path.iterdir()] == ["kept"] and not any((tmp_path / "kept").iterdir())
    monkeypatch.undo()
    path = write_text(tmp_path / "kept" / "summary.md", "a table\n")
    stamp = (path.stat().st_ino, path.stat().st_mtime_ns)
    full_disk(monkeypatch)  # any write would fail now
    assert write_text(path, "a table\n") == path and (path.stat().st_ino, path.stat().st_mtime_ns) == stamp
    with pytest.raises(OSError):
        write_text(path, "another table\n")
    assert path.read_text() == "a table\n"


def test_a_warm_start_on_an_operator_without_a_naive_reconstruction_is_refused_up_front(files, capsys):
    """DPS's start= on phase retrieval: restore said only 'phase-retrieval has no naive reconstruction', the
    Python API raised a NotImplementedError mid-run, and eval started its run (and wrote its folder) first."""
    prior = load_prior("gmm-demo")
    op = make_operator("phase-retrieval", prior.shape)
    y = measure(op, torch.zeros(1, *prior.shape), 0.05)
    with pytest.raises(TypeError, match=r"its warm start \(start = 100\) needs a naive reconstruction.*leave start"):
        solve("dps", prior, op, y, sigma_y=0.05, start=100, steps=2)
    Path("one").mkdir()
    shutil.copy("clean.png", "one")
    assert main(["eval", "--data", "one", "--model", "gmm-demo", "--tasks", "phase-retrieval", "--methods", "dps",
                 "--set", "dps.start=100", "--steps", "2", "--out", "evalrun"]) == 2
    assert "drop from --set what does not apply: dps" in capsys.readouterr().err and not Path("evalrun").exists()
    assert main(["restore", "clean.png", "--model", "gmm-demo", "--task", "phase-retrieval", "--method", "dps",
                 "--set", "start=100", "--steps", "2", "--out", "r.png"]) == 2
    assert "its warm start (start = 100)" in capsys.readouterr().err
    assert solve("dps", prior, make_operator("hdr", prior.shape), y.new_zeros(1, *prior.shape), start=100,
                 steps=2).shape == (1, *prior.shape)  # an operator with a naive reconstruction: as before


def test_task_options_reach_the_operator_and_bad_ones_are_refused(files, capsys, monkeypatch):
    """--task-option: a blur's std, a box's size and place, from restore and eval (before, only the Python API
    could set them); eval records them with its run and refuses to mix runs of other options."""
    from diffprior.commands import evaluate, restore
    made = []
    real = restore.make_operator
    monkeypatch.setattr(restore, "make_operator", lambda *a, **k: made.append(k) or real(*a, **k))
    monkeypatch.setattr(evaluate, "make_operator", lambda *a, **k: made.append(k) or real(*a, **k))
    argv = ["restore", "clean.png", "--model", "gmm-demo", "--method", "tv", "--json", "--overwrite", "--out", "t.png"]
    assert main(argv + ["--task", "box-inpaint", "--task-option", "size=8", "position=0,40"]) == 0
    assert made[-1] == {"seed": 0, "size": 8, "position": [0, 40]}
    assert json.loads(capsys.readouterr().out)["task_options"] == {"size": 8, "position": [0, 40]}
    assert main([a for a in argv if a != "--json"] + ["--task", "gaussian-blur", "--task-option", "std=1.5"]) == 0
    assert capsys.readouterr().out.startswith("gaussian-blur (std=1.5) / tv on clean.png")
    for options, message in ((["size=abc"], "box-inpaint option size='abc'"),
                             (["bogus=1"], "box-inpaint has no option bogus; its options are size, margin, position"),
                             (["sr4.kernel=box"], "sr4 is not a task of this run"),
                             (["size=8", "size=9"], "given twice"), (["size"], "expects [TASK.]KEY=VALUE"),
                             (["size=true"], "size=True: a whole number"), (["seed=3"], "seed is the run's own"),
                             (["margin=null"], "give a value, or leave the option out")):
        assert main(argv + ["--task", "box-inpaint", "--task-option", *options]) == 2
        assert message in capsys.readouterr().err, options
    assert main(argv + ["--task", "box-inpaint", "--task-option", "position=[0,40]", "size=8"]) == 0
    assert made[-1] == {"seed": 0, "size": 8, "position": [0, 40]}  # JSON's list as the list, not in another
    capsys.readouterr()
    assert main(argv + ["--task", "gaussian-blur", "--task-option", "size=99999999"]) == 2  # not an allocation
    assert "a 99999999x99999999 kernel is larger than the 64x64 image" in capsys.readouterr().err
    assert main(argv + ["--mask", "white64.png", "--task-option", "size=8"]) == 2
    assert "inpaint takes its holes from --mask" in capsys.readouterr().err

    Path("one").mkdir()
    shutil.copy("clean.png", "one")
    run = ["eval", "--data", "one", "--model", "gmm-demo", "--tasks", "gaussian-blur,box-inpaint", "--methods", "tv",
           "--out", "evalrun", "--no-progress", "--task-option"]
    made.clear()
    assert main(run + ["gaussian-blur.std=1.5"]) == 0
    assert {"seed": 0, "std": 1.5} in made and {"seed": 0} in made  # the blur's option; the box's defaults
    assert json.loads(Path("evalrun/run.json").read_text())["identity"]["task_options"] == {"gaussian-blur": {"std": 1.5}}
    assert "## gaussian-blur (std=1.5)\n" in Path("evalrun/summary.md").read_text()
    assert main(run + ["gaussian-blur.std=2"]) == 2 and "holds a run made with other settings" in capsys.readouterr().err
    assert main(run + ["std=2"]) == 2 and "say which task's" in capsys.readouterr().err
    # in range, but the arithmetic breaks (a NaN kernel): refused before the run writes its folder
    assert main(run[:-4] + ["--out", "evalnan", "--no-progress", "--task-option", "gaussian-blur.std=1e-320"]) == 2
    assert "measurement is not finite" in capsys.readouterr().err and not Path("evalnan").exists()


def test_solve_refuses_a_task_that_is_not_its_operators():
    """dp.solve(task="sr4") on a phase-retrieval operator ran with super-resolution's settings, silently."""
    prior = load_prior("gmm-demo")
    for task, named in (("sr4", "phase-retrieval"), ("box-inpaint", "hdr"), ("box-inpaint", "random-inpaint")):
        op = make_operator(named, prior.shape)
        with pytest.raises(ValueError, match=f"task='{task}', but the operator is {named}'s: give task='{named}'"):
            solve("tv" if op.linear else "dps", prior, op, measure(op, torch.zeros(1, *prior.shape), 0.05), task=task)
    # operators built from their class carry the class's name: a blur takes either blur's settings
    from diffprior.operators import Blur, SuperResolution, gaussian_kernel
    y, side = torch.zeros(1, *prior.shape), prior.shape[-2:]
    blur = Blur(gaussian_kernel(9, 1.0), side)
    for op, task, fits in ((blur, "sr4", "'gaussian-blur' or 'motion-blur'"),
                           (SuperResolution(4, side), "gaussian-blur", "'sr4'")):
        with pytest.raises(ValueError, match=f"task='{task}', but the operator is {op.name}'s: give task={fits}"):
            solve("tv", prior, op, op.A(y), task=task)
    assert solve("tv", prior, blur, blur.A(y), task="motion-blur").shape == y.shape
    op = make_operator("box-inpaint", prior.shape)  # a mask's settings for a box: the mask is what counts
    assert solve("tv", prior, op, measure(op, torch.zeros(1, *prior.shape), 0.05), task="inpaint").shape[0] == 1


class FullStream:
    """A standard stream on a full disk (`> /dev/full`)."""

    def write(self, text):
        raise OSError(errno.ENOSPC, "No space left on device")

    def flush(self):
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_standard_output_is_named(files, capsys, monkeypatch):
    """`restore ... > /dev/full`: the message says that standard output is what could not be written."""
    monkeypatch.setattr(sys, "stdout", FullStream())
    assert main(["restore", "--input", "clean.png", "--task", "sr4", "--steps", "3", "--out", "r.png",
                 "--device", "cpu"]) == 2
    assert capsys.readouterr().err.strip().endswith("error: No space left on device: standard output")


def test_a_full_standard_error_loses_nothing(files, monkeypatch):
    """`restore ... 2> /dev/full`: progress bars and warnings that cannot be written do not stop the run."""
    monkeypatch.setattr(sys, "stderr", FullStream())
    assert main(["restore", "--input", "clean.png", "--task", "sr4", "--steps", "3", "--out", "r.png",
                 "--device", "cpu"]) == 0
    assert Path("r.png").exists()
    assert main(["restore", "--input", "missing.png", "--task", "sr4", "--out", "r2.png"]) == 2  # said nowhere


def test_a_closed_standard_output_is_no_error(monkeypatch):
    """Started with standard output closed (`>&-`), Python's sys.stdout is None: print() writes nothing."""
    monkeypatch.setattr(sys, "stdout", None)
    assert main(["models"]) == 0
