"""`diffprior eval`: solvers over a folder of images, with resumable CSV rows and a summary with CIs.

    diffprior eval --data celeba/ --first 009501 --last 010000 --tasks box-inpaint,sr4 \\
        --methods sdedit,dps --set sdedit.t0=400,500,600 --seeds 2 --batch 8 --out runs/celeba

Work items are (image, task, method, settings, seed), one row each in OUT/rows.csv: image, task, method,
settings (the solver's settings as compact JSON), seed, psnr, ssim, lpips, residual, seconds (per image)
and nfe (network evaluations per image, counted on the prior). Rows are appended as each batch finishes.
`--set METHOD.KEY=V1,V2,...` makes a grid: every combination of values is a cell of its own. Every
(image, task, seed) also gets a `naive` row: the operator's simple reconstruction, the baseline.
Metrics a size does not allow (LPIPS under 31x31) and those of a diverged solver are empty fields.
`--save-images K` also keeps the restorations of the first K images as PNG under OUT/images/.

Randomness. A task's operator is drawn once per (task, seed) (box position, random mask, motion kernel) and
is the same for every image: that is what lets images share a batch (`--mask` adds the task `inpaint`, the only
task by default then, whose mask is a file's for every image, or each image's own from a folder of masks). An
image's measurement noise comes from a generator seeded by (seed, task, image name), so every method sees the
same y. A solver's noise comes from one generator per batch, seeded by (seed, task, method, settings, the
batch's image names). Batches are fixed chunks of --batch consecutive images, so a resumed or distributed run
gives the numbers of an uninterrupted single-process run (on the same kind of device).

Resume. A row is written only once complete, each batch is flushed to disk, and rerunning the same command
skips the rows present (key: image, task, method, settings, seed), drops a torn last line left by a hard
kill, and redoes only what is missing. OUT/run.json records what fixes the numbers (model, image size,
steps, sigma_y or --poisson, batch, data folder): a command that differs there is refused. Tasks, methods, settings,
seeds or images may be added to a finished run.

Sweep figure (OUT/sweep.png), where a method's cells differ in one numeric setting alone over 3 or more values
(e.g. `--set dps.scale=1,2,3`): PSNR and LPIPS against that setting, with their intervals, a column per task.

Summary (OUT/summary.md and OUT/summary.json), per cell task x method x settings: each image's metric is
first averaged over its seeds, then mean +- t(0.975, n - 1) s / sqrt(n) is taken over the n images (a 95%
Student-t interval): images are the independent units, the seeds of one image are not. summary.json also
gives the mean of each seed alone and, with two or more seeds, how far one image's value moves with the seed
(the standard deviation within an image, pooled over images; summary.md shows it for PSNR). Empty (NaN)
values are left out and counted.

Distributed. `torchrun --nproc-per-node 4 -m diffprior eval ...` spreads the batches over the processes
(cuda:LOCAL_RANK each with NCCL where CUDA is available, Gloo on CPUs). Each rank appends to
OUT/rows.rank{r}.csv; after a barrier rank 0 merges every file into OUT/rows.csv and writes the summary.
Across nodes, start the same command on every node, with OUT on a shared file system:

    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
        --rdzv-id eval1 -m diffprior eval ...

Any number of processes may resume any run. The progress bar (rank 0) counts rank 0's share, which is
balanced with the others': every cell's batches are dealt over the ranks in turn.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import io
import itertools
import json
import math
import os
import re
import statistics
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Iterator, Sequence

import torch
from PIL import Image
from torch import Tensor
from tqdm.auto import tqdm

from .. import arguments
from ..data import name_range
from ..download import sha256_of
from ..io import list_images, load_image, load_mask, open_image, save_image
from ..metrics import image_metrics, residual
from ..nonlinear import measure_poisson, poisson_sigma_y
from ..devices import pick_device, sync
from ..io import all_or_none, output_folder, write_text
from ..models import DEFAULT_MODEL, load_prior
from ..operators import Inpaint, Operator, measure
from ..tasks import TASKS, make_operator
from ..prior import NetworkPrior, Prior
from ..solvers import (SOLVERS, SPECS, DivergenceError, check_settings, settings_for, solve, solver_settings, spec_of,
                       tuned_settings)
from .common import (add_noise_arguments, add_prior_arguments, add_range_arguments, check_grey_task,
                     check_task_options, derive_seed, differences, image_side, parse_task_options, read_record,
                     task_title)

COLUMNS = ["image", "task", "method", "settings", "seed", "psnr", "ssim", "lpips", "residual", "seconds", "nfe"]
METRICS = COLUMNS[5:]
# run.json: what fixes the numbers
IDENTITY = ("model", "config", "dtype", "size", "steps", "sigma_y", "poisson", "batch", "data", "mask", "task_options")
NAIVE = "naive"
MASK_TASK = "inpaint"  # the task of --mask: masks of the user's own, a file for every image or one per image
Key = tuple[str, str, str, str, str]  # image, task, method, settings, seed


class RunMismatch(ValueError):
    """The output folder holds a run made with other settings."""


# -- the work --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Unit:
    """One batch: a chunk of images through one (task, seed, method, settings) cell."""

    chunk: int
    task: str
    seed: int
    method: str  # a solver's name, or "naive"
    settings: str  # compact JSON of the solver's settings

    def keys(self, chunks: list[list[Path]]) -> list[Key]:
        return [(p.name, self.task, self.method, self.settings, str(self.seed)) for p in chunks[self.chunk]]


def compact(settings: dict) -> str:
    return json.dumps(settings, sort_keys=True, separators=(",", ":"))


def parse_grid(pairs: Sequence[str], methods: Sequence[str]) -> dict[str, list[dict]]:
    """`METHOD.KEY=V1,V2 ...` -> per method, every combination of the values (values read as JSON where
    they parse: numbers, true, null, a table {"50": 2, "100": 3}; text otherwise). A method without --set has
    one cell, {}."""
    axes: dict[str, dict[str, list]] = {m: {} for m in methods}
    for pair in pairs:
        lhs, eq, rhs = pair.partition("=")
        method, dot, key = lhs.partition(".")
        if not (eq and dot and key and rhs):
            raise ValueError(f"--set expects METHOD.KEY=VALUE[,VALUE...], got {pair!r}")
        if method not in axes:
            raise ValueError(f"--set {pair}: {method!r} is not one of the --methods ({', '.join(methods)})")
        key = key.replace("-", "_")
        if key in axes[method]:
            raise ValueError(f"--set {method}.{key} is given twice; give its values once, comma-separated")
        if key not in solver_settings(method):
            raise ValueError(f"--set {pair}: {method} has no setting {key!r}; its settings are "
                             + ", ".join(solver_settings(method)))
        try:  # commas inside a JSON value ({"50": 2, "100": 3}) do not separate values
            values = json.loads(f"[{rhs}]")
        except json.JSONDecodeError:
            values = (_json_or_text(v) for v in rhs.split(","))
        axes[method][key] = list({json.dumps(v, sort_keys=True): v for v in values}.values())  # each value once
        for value in axes[method][key]:
            check_settings(method, {key: value})
    return {m: [dict(zip(a, combo)) for combo in itertools.product(*a.values())] for m, a in axes.items()}


def _json_or_text(value: str):
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def select_images(folder: str | Path, *, first: str | None = None, last: str | None = None,
                  n: int | None = None) -> list[Path]:
    """The folder's images sorted by name, those whose stem lies in [first, last], then the first n. An image
    is known by its stem (in ranges, figures and saved restorations), so two files may not share one."""
    selected = name_range(first, last)
    paths = [p for p in list_images(folder) if selected(p.stem)]
    by_stem: dict[str, Path] = {}
    for p in paths:
        if p.stem in by_stem:
            raise ValueError(f"{by_stem[p.stem].name} and {p.name} in {folder} share the name {p.stem!r}: "
                             "rename or move one (images are known by their name without the suffix)")
        by_stem[p.stem] = p
    return paths if n is None else paths[:n]


def readable(paths: list[Path], n: int | None = None) -> tuple[list[Path], list[tuple[Path, str]]]:
    """The first n image files that decode (all with n None), and (path, reason) for those before that fail."""
    good, bad = [], []
    for p in paths:
        if n is not None and len(good) == n:
            break
        try:
            open_image(p)
            good.append(p)
        except (ValueError, OSError) as e:
            bad.append((p, str(e)))
    return good, bad


def probe(task: str, size: int) -> Operator:
    """An operator of `task` for what its random parts do not change (which solvers fit it, whether it has a
    naive reconstruction); "inpaint", a mask file's task, as a mask that misses nothing."""
    return Inpaint(torch.ones(size, size)) if task == MASK_TASK else make_operator(task, (3, size, size))


def has_naive(task: str, size: int) -> bool:
    op = probe(task, size)
    try:
        op.naive(op.A(torch.zeros(1, 3, size, size)))
        return True
    except NotImplementedError:
        return False


def work_units(n_chunks: int, cells: dict[str, list[tuple[str, str]]], seeds: int) -> list[tuple[Unit, int]]:
    """Every unit, image chunk by image chunk, with its cell's index (for dealing the units over ranks)."""
    units = []
    for c in range(n_chunks):
        k = 0
        for task, task_cells in cells.items():
            for seed in range(seeds):
                for method, settings in task_cells:
                    units.append((Unit(c, task, seed, method, settings), k))
                    k += 1
    return units


def saved_image(out: Path, task: str, method: str, settings: str, seed: int | str, image: str) -> Path:
    """Where `evaluate(save=K)` keeps a restoration: OUT/images/TASK/METHOD[_KEY=VALUE,...]/seedS/IMAGE.png."""
    pairs = ",".join(f"{k}={v}" for k, v in json.loads(settings).items())
    cell = re.sub(r"[^\w.=,+-]", "_", f"{method}_{pairs}" if pairs else method)
    return Path(out) / "images" / task / cell / f"seed{seed}" / (Path(image).stem + ".png")


# -- row files -------------------------------------------------------------------------------------------
def row_files(out: Path) -> list[Path]:
    return [f for f in [out / "rows.csv", *sorted(out.glob("rows.rank*.csv"))] if f.is_file()]


def read_rows(path: Path) -> list[dict]:
    """The complete rows of a row file (a torn last line, without its newline, is not a row)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is damaged (not text at byte {e.start}): delete it to compute its rows again, "
                         "or choose another --out") from None
    text = text[:text.rfind("\n") + 1]
    lines = list(csv.reader(io.StringIO(text)))
    if lines and lines[0] != COLUMNS:
        raise ValueError(f"{path} is not a diffprior eval row file (its header is {','.join(lines[0])})")
    rows = [dict(zip(COLUMNS, r)) for r in lines[1:] if len(r) == len(COLUMNS)]
    for row in rows:
        for m in METRICS:
            try:
                float(row[m] or "nan")
            except ValueError:
                raise ValueError(f"{path}: {m} {row[m]!r} of {row['image']}, {row['task']}, {row['method']} is not "
                                 "a number (the file was edited or damaged): delete that row to compute it again") \
                    from None
    return rows


def row_key(row: dict) -> Key:
    return (row["image"], row["task"], row["method"], row["settings"], row["seed"])


class RowWriter:
    """Append-only rows: a torn last line (from a hard kill) is cut off first; each `write` is written whole
    and synced, or (a full disk) cut off again, so a row on disk is a complete row."""

    def __init__(self, path: Path):
        self.path = path
        if path.is_file():
            data = path.read_bytes()
            if data and not data.endswith(b"\n"):
                os.truncate(path, data.rfind(b"\n") + 1)
                print(f"note: dropped the incomplete last line of {path}", file=sys.stderr)
            read_rows(path)  # checks the header
        self.file = None  # opened at the first write: a finished run, reread, writes nothing

    def write(self, rows: list[dict]) -> None:
        if self.file is None:
            self.file = open(self.path, "ab", buffering=0)
            if self.file.tell() == 0:
                self._put(",".join(COLUMNS) + "\n")
        buffer = io.StringIO()
        csv.DictWriter(buffer, COLUMNS, lineterminator="\n").writerows(rows)
        self._put(buffer.getvalue())

    def _put(self, text: str) -> None:
        start = self.file.seek(0, os.SEEK_END)
        try:
            rest = memoryview(text.encode())
            while rest:
                rest = rest[self.file.write(rest):]
            os.fsync(self.file.fileno())
        except OSError as e:  # a full disk: no torn row left behind, and the error names the file
            with contextlib.suppress(OSError):
                self.file.truncate(start)
            raise type(e)(e.errno, e.strerror, str(self.path)) from None

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def merge_rows(out: Path, order: list[Key]) -> list[dict]:
    """Merge every rank's file into rows.csv, written atomically, each key once: the rows already in rows.csv
    keep their place and the ranks' follow in work order, so that a rerun with nothing to do (or another run
    into the folder, as reproduce's table 4 groups) leaves the file as it is; the rank files are removed after.
    Returns this run's rows (the keys of `order`) in work order."""
    position = {k: i for i, k in enumerate(order)}
    files = row_files(out)
    kept = [r for f in files if f.name == "rows.csv" for r in read_rows(f)]
    new = [r for f in files if f.name != "rows.csv" for r in read_rows(f)]
    rows: dict[Key, dict] = {}
    for r in kept + sorted(new, key=lambda r: (position.get(row_key(r), len(position)), row_key(r))):
        rows.setdefault(row_key(r), r)
    text = io.StringIO()
    writer = csv.DictWriter(text, COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows.values())
    write_text(out / "rows.csv", text.getvalue())
    for f in files:
        if f.name != "rows.csv":
            f.unlink()
    return sorted((r for k, r in rows.items() if k in position), key=lambda r: position[row_key(r)])


def _number(v: float, spec: str) -> str:
    return "" if math.isnan(v) else format(v, spec)


# -- the run's identity, devices and ranks --------------------------------------------------------------
def check_run(path: Path, identity: dict, info: dict, *, write: bool) -> None:
    """Refuse to add to a run made with other settings; record this run's settings if it is the first."""
    if path.is_file():
        stored = read_record(path).get("identity", {})
        diff = differences(stored, identity, IDENTITY)
        if diff:
            raise RunMismatch(f"{path.parent} holds a run made with other settings ({'; '.join(diff)}). "
                              "Rerun with the same settings to continue it, or choose another --out.")
    elif rows := row_files(path.parent):  # rows of unknown settings: they must not pass for this run's
        raise RunMismatch(f"{rows[0]} has no {path.name} beside it, so the settings its rows were made with are "
                          "unknown: delete the row files to start again, or choose another --out")
    elif write:
        text = json.dumps({"identity": identity, **info}, indent=2) + "\n"
        write_text(path, text)


def check_masks(path: Path, masks: dict[str, Tensor], *, write: bool) -> None:
    """A mask folder's masks as the run's rows were made with them: an image whose mask has changed since is
    refused (its rows would mix two masks); the masks of images new to the run are recorded in `path`."""
    digests = {name: hashlib.sha256(m.numpy().tobytes()).hexdigest()[:16] for name, m in masks.items()}
    record = read_record(path) if path.is_file() else {}
    stored = record.get("masks", {})
    changed = sorted(name for name in digests.keys() & stored.keys() if digests[name] != stored[name])
    if changed:
        raise RunMismatch(f"{path.parent} holds rows of images whose masks have changed since ({', '.join(changed[:3])}"
                          f"{' ...' if len(changed) > 3 else ''}): choose another --out, or restore those masks")
    if write and not digests.items() <= stored.items():
        text = json.dumps({**record, "masks": {**stored, **digests}}, indent=2) + "\n"
        write_text(path, text)


JOIN_TIMEOUT = timedelta(minutes=5)  # for the processes of a torchrun job to meet (a stale WORLD_SIZE waits no longer)
FINISH_TIMEOUT = timedelta(days=7)   # at the final barrier, for the slowest rank to finish its share


@dataclass
class Ranks:
    """This process's place among torch.distributed ranks (rank 0 of 1 when run alone); `finish` is the
    process group of the final barrier, whose timeout is long."""

    rank: int = 0
    world: int = 1
    finish: object = None

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist
            dist.barrier(group=self.finish)

    def close(self) -> None:
        if self.world > 1:
            import torch.distributed as dist
            dist.destroy_process_group()


def _environment_int(name: str, default: int) -> int:
    value = os.environ.get(name, str(default))
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"the environment variable {name} is {value!r}, not a whole number (torchrun sets it; "
                         f"unset it to run alone)") from None


def start_ranks(device: str) -> tuple[Ranks, torch.device]:
    """Join the process group when torchrun started this process (WORLD_SIZE > 1), and pick the device:
    `pick_device`, with "auto" and "cuda" meaning cuda:LOCAL_RANK."""
    world, local = _environment_int("WORLD_SIZE", 1), _environment_int("LOCAL_RANK", 0)
    dev = pick_device(device, local)
    if world == 1:
        return Ranks(), dev
    import torch.distributed as dist
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
    print(f"rank {os.environ.get('RANK', '?')} of {world} (WORLD_SIZE from the environment, as torchrun sets it): "
          f"waiting up to {JOIN_TIMEOUT.seconds // 60} min for the others at {where}", file=sys.stderr, flush=True)
    try:
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", timeout=JOIN_TIMEOUT)
    except (RuntimeError, ValueError) as e:
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise RuntimeError(f"the {world} processes of WORLD_SIZE={world} did not meet at {where} ({why}): start the "
                           "run with torchrun, or unset WORLD_SIZE, RANK and LOCAL_RANK to run alone") from None
    # ranks that finish first wait at the final barrier for the others: a group of its own with a long timeout
    return Ranks(dist.get_rank(), dist.get_world_size(), dist.new_group(backend="gloo", timeout=FINISH_TIMEOUT)), dev


@contextlib.contextmanager
def process_group(device: str) -> Iterator[tuple[Ranks, torch.device]]:
    """`start_ranks`, and leave the process group at the end."""
    ranks, dev = start_ranks(device)
    try:
        yield ranks, dev
    finally:
        ranks.close()


# -- the evaluation --------------------------------------------------------------------------------------
def stamp(path: Path) -> tuple[int, int] | None:
    """A file's inode and modification time (None if absent): unchanged exactly when it was not written."""
    return (path.stat().st_ino, path.stat().st_mtime_ns) if path.exists() else None


def evaluate(data: str | Path, out: str | Path, *,
             tasks: Sequence[str] = ("box-inpaint", "random-inpaint", "gaussian-blur", "sr4"),
             methods: Sequence[str] = ("sdedit", "scoreald", "dps"),
             grid: dict[str, list[dict]] | None = None,  # per method, its settings cells (parse_grid)
             n: int | None = None,                # only the first n images (after first/last)
             first: str | None = None,            # file-name range [first, last] of stems, inclusive
             last: str | None = None,
             seeds: int = 1,                      # seeds 0 .. seeds - 1
             steps: int | None = None,            # solver steps; None: each solver's default
             batch: int = 8,                      # images per solver call
             model: str = DEFAULT_MODEL,
             config: str | None = None,           # architecture of a guided-diffusion .pt
             device: str = "auto",
             dtype: str = "auto",                 # the network's precision (models.load_prior)
             sigma_y: float | None = None,        # noise std; None: 0.05, or with `poisson` that noise's average
             poisson: float | None = None,        # photons at full brightness: photon noise instead of Gaussian
             size: int | None = None,             # image side; default the prior's
             save: int = 0,                       # keep the first `save` images' restorations (saved_image)
             mask: str | Path | None = None,      # the task "inpaint"'s mask file or folder (white = known)
             task_options: dict[str, dict] | None = None,  # per task, its operator's options (make_operator's)
             progress: bool = True,
             summary_files: bool = True) -> dict | None:  # write OUT/summary.md and .json
    """Run the evaluation (see the module docstring); returns the summary on rank 0, None elsewhere."""
    data, out, grid = Path(data), Path(out), grid or {}
    tasks, methods = list(dict.fromkeys(tasks)), list(dict.fromkeys(methods))  # a repeated name is one
    if MASK_TASK in tasks and mask is None:
        raise ValueError(f"the task {MASK_TASK} takes its mask from --mask (white = known, black = missing): give one")
    if mask is not None and MASK_TASK not in tasks:
        raise ValueError(f"--mask is for the task {MASK_TASK}: add {MASK_TASK} to --tasks (or drop --mask)")
    for given, known, what in ((tasks, [*TASKS, MASK_TASK], "task"), (methods, SOLVERS, "method")):
        unknown = [v for v in given if v not in known]
        if unknown:
            raise ValueError(f"unknown {what} {', '.join(unknown)}; choose from {', '.join(known)}")
    if not tasks or batch < 1 or seeds < 1:
        raise ValueError("give at least one task, and --batch and --seeds of at least 1")
    if poisson is None and sigma_y is None:
        sigma_y = 0.05
    output_folder(out, "an evaluation")
    with process_group(device) as (ranks, dev):
        images, skipped = readable(select_images(data, first=first, last=last), n)  # before anything is written
        if not images:
            raise ValueError(f"no readable image selected in {data}"
                             + "".join(f"\n  {p.name}: {reason}" for p, reason in skipped[:3]))
        prior = load_prior(model, dev, config=config, dtype=dtype)
        size = _image_size(prior, size)
        for task in tasks:
            check_grey_task(prior, task)
        masks = None if mask is None else mask_of(mask, images, size)
        check_task_options(task_options or {}, (prior.shape[0], size, size))
        noise = sigma_y if sigma_y is not None else poisson_sigma_y(torch.zeros(1), poisson)  # at mid-grey
        unfit = unfit_pairs(tasks, methods, size, noise)
        if unfit:
            raise ValueError("drop from --methods or --tasks what does not apply: " + "; ".join(unfit))
        chunks = [images[i:i + batch] for i in range(0, len(images), batch)]
        tuned = tuned_settings(prior)
        cells = {task: [(NAIVE, "{}")] * has_naive(task, size)
                 + [(m, compact(settings_for(m, task, tuned, **{"steps": steps, **combo}))) for m in methods
                    for combo in grid.get(m, [{}])] for task in tasks}
        for method, settings in {c for task_cells in cells.values() for c in task_cells if c[0] != NAIVE}:
            check_settings(method, json.loads(settings), prior.schedule.T)  # before any work, not mid-run
        unfit = [f"{m} {settings} on {task}: {why}" for task, task_cells in cells.items() for m, settings in task_cells
                 if m != NAIVE and (why := why_not(m, task, size, noise, json.loads(settings)))]
        if unfit:
            raise ValueError("drop from --set what does not apply: " + "; ".join(unfit))

        # all checked: only now is anything written (a refused command must not fix the folder's settings)
        out.mkdir(parents=True, exist_ok=True)
        identity = {"model": str(Path(model).resolve()) if Path(model).exists() else str(model), "config": config,
                    "dtype": prior.precision, "size": size, "steps": steps, "sigma_y": sigma_y,
                    "poisson": poisson, "batch": batch,
                    "data": str(data.resolve()), "mask": None if mask is None else (  # a file's content, a folder's place
                        str(Path(mask).resolve()) if Path(mask).is_dir() else sha256_of(Path(mask))),
                    "task_options": task_options or None}
        check_run(out / "run.json", identity, {"command": "diffprior " + " ".join(sys.argv[1:]), "device": str(dev)},
                  write=ranks.rank == 0)
        if mask is not None and Path(mask).is_dir():  # the folder's place is in the identity; its masks, here
            check_masks(out / "run.json", masks, write=ranks.rank == 0)
        if ranks.rank == 0:
            report_skipped(out, skipped)
        units = work_units(len(chunks), cells, seeds)
        order = [k for u, _ in units for k in u.keys(chunks)]
        mine = [u for u, k in units if (u.chunk + k) % ranks.world == ranks.rank]  # each cell dealt over the ranks
        done = {row_key(r) for f in row_files(out) for r in read_rows(f)}
        kept = {p.name for p in images[:save]}  # the images whose restorations are saved
        if ranks.rank == 0:
            left = sum(k not in done for k in order)
            print(f"{len(images)} images ({len(skipped)} skipped), {sum(map(len, cells.values()))} cells "
                  f"(task x method x settings), {seeds} seed(s): {len(order)} rows, {len(order) - left} done, "
                  f"{left} to do" + (f" over {ranks.world} processes" if ranks.world > 1 else ""), file=sys.stderr)
            unkept = [k for k in order if k in done and k[0] in kept
                      and not saved_image(out, k[1], k[2], k[3], k[4], k[0]).is_file()]
            if unkept:
                print(f"note: {len(unkept)} restorations to keep as images belong to rows already done, which are "
                      f"not run again: they stay missing from {out / 'images'} (a new --out computes and keeps "
                      "them all)", file=sys.stderr)

        files = [out / "rows.csv", out / "summary.md", out / "summary.json"]
        stamps = [stamp(f) for f in files]  # to say whether this run changed them
        writer = RowWriter(out / ("rows.csv" if ranks.world == 1 else f"rows.rank{ranks.rank}.csv"))
        bar = tqdm(total=sum(len(chunks[u.chunk]) for u in mine), unit="row", smoothing=0, dynamic_ncols=True,
                   initial=sum(k in done for u in mine for k in u.keys(chunks)),
                   desc="eval" if ranks.world == 1 else f"eval (rank 0 of {ranks.world})",
                   disable=not progress or ranks.rank != 0)
        runner = Runner(prior, chunks, size, sigma_y, dev, out, kept, masks, task_options=task_options,
                        poisson=poisson)
        try:
            for unit in mine:
                keys = unit.keys(chunks)
                todo = [k not in done for k in keys]
                if not any(todo):
                    continue
                rows = runner.run(unit)
                writer.write([r for r, new in zip(rows, todo) if new])
                done.update(keys)
                bar.update(sum(todo))
        finally:
            bar.close()
            writer.close()
        ranks.barrier()
        if ranks.rank != 0:
            return None
        summary = summarize(merge_rows(out, order), {**identity, "seeds": seeds, "images": len(images)})
        if summary_files:
            write_summary(out, summary)
            changed = stamps != [stamp(f) for f in files]
            figure = sweep_figure(summary, out / "sweep.png") if changed or not (out / "sweep.png").exists() else None
            also = f", and {figure}" if figure else ""
            print(f"wrote {files[0]}, {files[1]} and {files[2]}{also}" if changed else
                  f"{files[0]}, {files[1]} and {files[2]} were up to date" + (f"; wrote {figure}" if figure else
                                                                             ": nothing written"), file=sys.stderr)
        failed = failed_cells(summary)
        if failed:
            print(f"error: every row of {len(failed)} cell(s) is empty (the solver diverged on each batch; see the "
                  "warnings above): " + "; ".join(failed), file=sys.stderr)
        return summary


def diverged(cell: dict) -> bool:
    """Whether no row of a summary cell was scored: a residual is missing only where the restoration was not
    finite."""
    return cell["residual"]["missing"] == cell["rows"]


def failed_cells(summary: dict) -> list[str]:
    """The cells with no row scored, as 'task / method settings'."""
    return [f"{c['task']} / {c['method']} {compact(c['settings'])}" for c in summary["cells"] if diverged(c)]


def why_not(method: str, task: str, size: int, sigma_y: float, settings: dict | None = None) -> str | None:
    """Why `method` (with these settings) does not apply to `task`, or None when it does (`SolverSpec.why_not`)."""
    return SPECS[method].why_not(probe(task, size), sigma_y, settings)


def unfit_pairs(tasks: Sequence[str], methods: Sequence[str], size: int, sigma_y: float) -> list[str]:
    """'method on task: why' for every pair in which the method does not apply to the task."""
    return [f"{m} on {task}: {why}" for task in tasks for m in methods if (why := why_not(m, task, size, sigma_y))]


def _image_size(prior: Prior, size: int | None) -> int:
    """The image side: the prior's, or `size` for a (fully convolutional) network prior run at another size."""
    image_side(prior, "eval")
    if size is None or size == prior.shape[-1]:
        return prior.shape[-1]
    if not isinstance(prior, NetworkPrior):
        raise ValueError(f"this prior only models {prior.shape[-1]}x{prior.shape[-1]} images; leave out --size")
    prior.shape = (prior.shape[0], size, size)
    try:  # one network call now, not a failure after the run's record is written
        with torch.no_grad():
            prior.predict(torch.zeros(1, *prior.shape, device=prior.device), prior.schedule.T - 1)
    except (ValueError, RuntimeError) as e:
        raise ValueError(f"--size {size}: the network does not run on {size}x{size} images ({e})") from None
    return size


def mask_of(path: str | Path, images: list[Path], size: int) -> dict[str, Tensor]:
    """The masks of the task "inpaint" (1 = known), image name -> (size, size) mask: a mask file is every image's;
    in a mask folder each image has its own, named as the image (any image suffix). A mask has the image size,
    or the size of its image (then cropped and resized as the image is). Refused (ValueError) before any
    work when one is missing, fits neither size, or observes nothing."""
    path = Path(path)
    files = {p.stem: p for p in list_images(path)} if path.is_dir() else None
    if files is not None:
        missing = [p.name for p in images if p.stem not in files]
        if missing:
            raise ValueError(f"{path} has no mask for {len(missing)} of the {len(images)} images, e.g. "
                             f"{', '.join(missing[:3])} (a mask is named as its image: {images[0].stem}.png)")
    masks, loaded = {}, {}  # loaded: (mask file, image size) -> mask, so a shared file is read once per size
    for p in images:
        with Image.open(p) as im:  # the header only
            own = im.size
        key = (files[p.stem] if files else path, own)
        if key not in loaded:
            try:
                loaded[key] = load_mask(key[0], (size, size), None if own == (size, size) else own)
                Inpaint(loaded[key])  # its own checks (a mask that observes no pixel), now rather than mid-run
            except ValueError as e:  # a shared mask file fits some images and not others: say which
                raise ValueError(f"{e} (for the image {p.name})") from None
        masks[p.name] = loaded[key]
    return masks


def report_skipped(out: Path, skipped: list[tuple[Path, str]]) -> None:
    text = "".join(f"{p.name}\t{reason}\n" for p, reason in skipped)
    for p, reason in skipped:
        print(f"skipping {p.name}: {reason}", file=sys.stderr)
    write_text(out / "skipped.txt", text)


class Runner:
    """Runs units one after another, keeping the current chunk's images and measurements and the operators."""

    def __init__(self, prior: Prior, chunks: list[list[Path]], size: int, sigma_y: float | None,
                 device: torch.device, out: Path | None = None, keep: set[str] = frozenset(),
                 masks: dict[str, Tensor] | None = None, channels: int = 3, task_options: dict[str, dict] | None = None,
                 poisson: float | None = None):
        self.prior, self.chunks, self.size, self.sigma_y, self.device = prior, chunks, size, sigma_y, device
        self.poisson = poisson  # photons at full brightness: `measure_poisson` instead of Gaussian noise
        self.task_options = task_options or {}
        # one image's shape; without a prior (measurements only) of `channels`
        self.shape = (channels if prior is None else prior.shape[0], size, size)
        self.out, self.keep = out, keep  # the images whose restorations are saved under out
        self.masks = masks  # the task "inpaint"'s: image name -> (H, W) mask, 1 = known
        self.ops: dict[tuple[str, int], Operator] = {}
        self.images: tuple[int, Tensor] | None = None
        self.measured: tuple[tuple[int, str, int], Tensor] | None = None

    def operator(self, task: str, seed: int, images: list[Path]) -> Operator:
        """The task's operator for a batch of images: drawn once per (task, seed); a mask of --mask per image."""
        if task == MASK_TASK:
            return Inpaint(torch.stack([self.masks[p.name] for p in images])[:, None]).to(self.device)
        if (task, seed) not in self.ops:
            self.ops[task, seed] = make_operator(task, self.shape, seed=seed,
                                                 **self.task_options.get(task, {})).to(self.device)
        return self.ops[task, seed]

    def clean(self, chunk: int) -> Tensor:
        if self.images is None or self.images[0] != chunk:
            x = torch.cat([load_image(p, self.size, channels=self.shape[0])
                           for p in self.chunks[chunk]]).to(self.device)
            self.images = (chunk, x)
        return self.images[1]

    def measurement(self, chunk: int, task: str, seed: int) -> Tensor:
        """y per image, its noise from a generator seeded by (seed, task, image name), on the CPU."""
        if self.measured is None or self.measured[0] != (chunk, task, seed):
            x = self.clean(chunk)
            y = torch.cat([self.noisy(self.operator(task, seed, [p]), x[i:i + 1],
                                      torch.Generator().manual_seed(derive_seed("measure", seed, task, p.name)))
                           for i, p in enumerate(self.chunks[chunk])])
            self.measured = ((chunk, task, seed), y)
        return self.measured[1]

    def noisy(self, op: Operator, x: Tensor, generator: torch.Generator) -> Tensor:
        """A(x) with the run's noise: Gaussian of std sigma_y, or photon noise of `poisson` photons."""
        if self.poisson is None:
            return measure(op, x, self.sigma_y, generator)
        return measure_poisson(op, x, self.poisson, generator)

    def run(self, unit: Unit) -> list[dict]:
        """Restore one batch and score it: one row per image."""
        names = [p.name for p in self.chunks[unit.chunk]]
        x, op = self.clean(unit.chunk), self.operator(unit.task, unit.seed, self.chunks[unit.chunk])
        y = self.measurement(unit.chunk, unit.task, unit.seed)
        sync(self.device)
        start, nfe = time.perf_counter(), 0
        if unit.method == NAIVE:
            x_hat = op.naive(y)
        else:
            gen = torch.Generator(self.device).manual_seed(
                derive_seed("solve", unit.seed, unit.task, unit.method, unit.settings, names))
            settings = json.loads(unit.settings)
            nfe = spec_of(unit.method).evaluations(self.prior.schedule, **settings)  # as the solver declares
            try:
                # Poisson noise without a given sigma_y: its average std over the batch (restore's, at batch 1)
                sigma_y = self.sigma_y if self.sigma_y is not None else poisson_sigma_y(y, self.poisson)
                x_hat = solve(unit.method, self.prior, op, y, sigma_y=sigma_y, generator=gen, progress=False,
                              **settings)
            except DivergenceError as e:
                batch = names[0] if len(names) == 1 else f"the batch {names[0]} ... {names[-1]}"
                tqdm.write(f"warning: {unit.task} / {unit.method} {unit.settings} seed {unit.seed} on {batch} "
                           f"({len(names)} rows left empty): {e}", file=sys.stderr)
                x_hat = torch.full_like(x, math.nan)
        sync(self.device)
        seconds = (time.perf_counter() - start) / len(names)
        for i, name in enumerate(names):
            if name in self.keep and bool(x_hat[i].isfinite().all()):
                save_image(x_hat[i], saved_image(self.out, unit.task, unit.method, unit.settings, unit.seed, name))
        scores = {k: v.tolist() for k, v in image_metrics(x_hat.float(), x).items()}
        scores["residual"] = residual(op, x_hat, y).tolist()
        return [{"image": name, "task": unit.task, "method": unit.method, "settings": unit.settings,
                 "seed": str(unit.seed), "psnr": _number(scores["psnr"][i], ".6f"),
                 "ssim": _number(scores["ssim"][i], ".6f"), "lpips": _number(scores["lpips"][i], ".6f"),
                 "residual": _number(scores["residual"][i], ".6f"), "seconds": f"{seconds:.4f}", "nfe": str(nfe)}
                for i, name in enumerate(names)]


# -- the summary -----------------------------------------------------------------------------------------
def t_quantile(p: float, df: int) -> float:
    """The p-quantile (p > 0.5) of Student's t with df degrees of freedom: bisection on the closed-form
    distribution function for integer df up to 100, the Cornish-Fisher expansion beyond."""
    z = statistics.NormalDist().inv_cdf(p)
    if df > 100:
        g = [(z**3 + z) / 4, (5 * z**5 + 16 * z**3 + 3 * z) / 96, (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384,
             (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160]
        return z + sum(gi / df ** (i + 1) for i, gi in enumerate(g))
    lo, hi = 0.0, 1e7
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _t_central(mid, df) < 2 * p - 1 else (lo, mid)
    return (lo + hi) / 2


def _t_central(t: float, df: int) -> float:
    """P(|T| <= t) for Student's t with integer df (the finite series in cos(theta), tan(theta) = t / sqrt(df))."""
    theta = math.atan(t / math.sqrt(df))
    s, c2 = math.sin(theta), math.cos(theta) ** 2
    if df % 2 == 0:  # sin(theta) (1 + 1/2 c^2 + 1.3/(2.4) c^4 + ...)
        total = term = 1.0
        for k in range(1, df // 2):
            term *= (2 * k - 1) / (2 * k) * c2
            total += term
        return s * total
    total = term = 1.0  # 2/pi (theta + sin cos (1 + 2/3 c^2 + 2.4/(3.5) c^4 + ...))
    for k in range(1, (df - 1) // 2):
        term *= (2 * k) / (2 * k + 1) * c2
        total += term
    return 2 / math.pi * (theta + (s * math.cos(theta) * total if df > 1 else 0.0))


def mean_ci(values: list[float]) -> dict:
    """Mean and the half-width of its 95% Student-t interval (None for fewer than two values)."""
    if not values:
        return {"mean": None, "ci95": None, "n": 0}
    n = len(values)
    ci = t_quantile(0.975, n - 1) * statistics.stdev(values) / math.sqrt(n) if n > 1 else None
    return {"mean": statistics.fmean(values), "ci95": ci, "n": n}


def seed_sd(per_image: list[list[float]]) -> float | None:
    """How far one image's value moves with the seed: the standard deviation over seeds within an image,
    pooled over the images that have two or more seeds (None if none has)."""
    variances = [statistics.variance(v) for v in per_image if len(v) > 1]
    return math.sqrt(statistics.fmean(variances)) if variances else None


def paired_to_best(cells: list[dict], psnr_by_image: list[dict[str, float]]) -> None:
    """Add to each cell `psnr_vs_best`: its PSNR minus that of its task's best cell (the highest mean PSNR),
    image by image over the images both have, with the 95% t-interval of that paired difference. Two cells
    within a narrow paired interval of each other are tied; a wide unpaired interval says little when both
    vary with the image alike."""
    for task in dict.fromkeys(c["task"] for c in cells):
        mine = [(c, v) for c, v in zip(cells, psnr_by_image) if c["task"] == task and c["psnr"]["mean"] is not None]
        if not mine:
            continue
        best, best_values = max(mine, key=lambda cv: cv[0]["psnr"]["mean"])
        for c, v in mine:
            diffs = [v[i] - best_values[i] for i in v if i in best_values]
            c["psnr_vs_best"] = {**mean_ci(diffs), "best": f"{best['method']} {compact(best['settings'])}"}


def summarize(rows: list[dict], run: dict, paired: bool = True) -> dict:
    """Per cell (task, method, settings), in the rows' order: each metric averaged per image over its
    seeds, then mean and 95% t-interval over the images; also each seed's mean, the spread over seeds
    within an image (`seed_sd`), the NaN count, and, if `paired` (the cells of a task restore the same
    measurements), the paired PSNR difference to the task's best cell (`paired_to_best`)."""
    cells: dict[tuple[str, str, str], list[dict]] = {}
    for r in rows:
        cells.setdefault((r["task"], r["method"], r["settings"]), []).append(r)
    out, psnr_by_image = [], []
    for (task, method, settings), cell in cells.items():
        entry = {"task": task, "method": method, "settings": json.loads(settings),
                 "images": len({r["image"] for r in cell}), "seeds": len({r["seed"] for r in cell}), "rows": len(cell)}
        for m in METRICS:
            per_image: dict[str, list[float]] = {}
            per_seed: dict[str, list[float]] = {}
            missing = 0
            for r in cell:
                v = float(r[m]) if r[m] else math.nan
                if not math.isfinite(v):  # empty, or an infinite PSNR (an exact restoration)
                    missing += 1
                    continue
                per_image.setdefault(r["image"], []).append(v)
                per_seed.setdefault(r["seed"], []).append(v)
            seed_means = {s: statistics.fmean(per_seed[s]) for s in sorted(per_seed, key=int)}
            entry[m] = {**mean_ci([statistics.fmean(v) for v in per_image.values()]), "missing": missing,
                        "seed_means": seed_means, "seed_sd": seed_sd(list(per_image.values()))}
            if m == "psnr":
                psnr_by_image.append({i: statistics.fmean(v) for i, v in per_image.items()})
        out.append(entry)
    if paired:
        paired_to_best(out, psnr_by_image)
    note = ("mean +- 95% Student-t interval over images; each image's value is first averaged over its seeds; "
            "empty or infinite values are left out and counted as missing")
    return {"run": run, "ci": note, "cells": out}


FORMATS = {"psnr": ".2f", "ssim": ".3f", "lpips": ".3f", "residual": ".3f", "seconds": ".3f", "nfe": ".0f"}


def paired_text(d: dict | None) -> str:
    """A cell's `psnr_vs_best` as text: 'best', '-0.42 ± 0.15', or '-' (none)."""
    if not d or d["mean"] is None:
        return "-"
    if d["mean"] == 0 and not d["ci95"]:
        return "best"
    return f"{d['mean']:+.2f}" + (f" ± {d['ci95']:.2f}" if d["ci95"] is not None else "")


def noise_text(run: dict) -> str:
    """The measurement noise of a run, as its summary names it."""
    if not run.get("poisson"):
        return f"sigma_y {run['sigma_y']}"
    given = ("its average std per batch" if run["sigma_y"] is None else run["sigma_y"])
    return f"Poisson noise of {run['poisson']:g} photons at full brightness (the solvers' sigma_y: {given})"


def write_summary(out: Path, summary: dict) -> None:
    run = summary["run"]
    lines = [f"# diffprior eval: {Path(run['model']).name}, {run['images']} images, {run['seeds']} seed(s)", "",
             f"steps {run['steps'] or 'solver default'}, {noise_text(run)}, batch {run['batch']}, "
             f"images {run['size']}x{run['size']} from {Path(run['data']).name}. Each value: {summary['ci']}.", ""]
    paired = any("psnr_vs_best" in c for c in summary["cells"])
    seeded = any(c["psnr"]["seed_sd"] is not None for c in summary["cells"])
    for task in dict.fromkeys(c["task"] for c in summary["cells"]):
        lines += [f"## {task_title(task, (run.get('task_options') or {}).get(task))}", "",
                  "| method | settings | images | PSNR (dB) | SSIM | LPIPS | residual | s / image | NFE |"
                  + " PSNR - best (paired) |" * paired + " PSNR per seed | PSNR sd over seeds |" * seeded,
                  "|---|---|---|---|---|---|---|---|---|" + "---|" * (paired + 2 * seeded)]
        for c in (c for c in summary["cells"] if c["task"] == task):
            values = []
            for m in METRICS:
                s, spec = c[m], FORMATS[m]
                value = ("diverged" if diverged(c) else "-") if s["mean"] is None else format(s["mean"], spec)
                if s["ci95"] is not None and m not in ("seconds", "nfe"):
                    value += f" ± {s['ci95']:{spec}}"
                if s["missing"] and s["mean"] is not None and m not in ("seconds", "nfe"):  # some, not all
                    value += f" ({s['missing']} of {c['rows']} missing)"
                values.append(value)
            values += [paired_text(c.get("psnr_vs_best"))] * paired
            if seeded:
                sd = c["psnr"]["seed_sd"]
                values += [" / ".join(f"{v:.2f}" for v in c["psnr"]["seed_means"].values()),
                           "-" if sd is None else f"{sd:.2f}"]
            lines.append(f"| {c['method']} | `{compact(c['settings'])}` | {c['images']} | " + " | ".join(values) + " |")
        lines.append("")
    if paired:
        lines.append("PSNR - best (paired): the cell's PSNR minus its task's best cell's, image by image, with the "
                     "95% interval of that difference; an interval that reaches 0 does not rank the two.")
    if seeded:
        lines.append("PSNR per seed: the mean over images of each seed alone (0, 1, ...). PSNR sd over seeds: how "
                     "far one image's PSNR moves with the seed (its operator draw, measurement noise and solver "
                     "noise), the standard deviation within an image, pooled over images.")
    with all_or_none([out / "summary.md", out / "summary.json"]):  # the two never disagree
        write_text(out / "summary.md", "\n".join(lines))
        write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")


# -- the command line ------------------------------------------------------------------------------------
PARSER = dict(help="evaluate solvers over a folder of images: resumable rows.csv and a summary",
              description=__doc__.split("\n\n")[0])


def sweeps(cells: list[dict]) -> list[tuple[str, str, str, str, list[dict]]]:
    """(task, method, setting, the other settings, cells by the setting's value) for each set of 3 or more cells of
    one task and method whose settings differ in that one number alone."""
    found = []
    for task, method in dict.fromkeys((c["task"], c["method"]) for c in cells):
        mine = [c for c in cells if (c["task"], c["method"]) == (task, method)]
        for key in sorted({k for c in mine for k, v in c["settings"].items() if _is_number(v)}):
            groups: dict[str, list[dict]] = {}
            for c in (c for c in mine if _is_number(c["settings"].get(key))):
                groups.setdefault(compact({k: v for k, v in c["settings"].items() if k != key}), []).append(c)
            found += [(task, method, key, rest, sorted(group, key=lambda c: c["settings"][key]))
                      for rest, group in groups.items() if len({c["settings"][key] for c in group}) >= 3]
    return found


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def sweep_figure(summary: dict, path: Path) -> Path | None:
    """PSNR and LPIPS (means with their 95% intervals) against each setting swept (`sweeps`), a column per task
    and setting, the naive reconstruction dashed (named in the legend when far off the curves); None, and nothing
    written, when the run swept nothing."""
    found = sweeps(summary["cells"])
    if not found:
        return None
    from ..figures import plt, save_figure
    panels = list(dict.fromkeys((task, key) for task, _, key, _, _ in found))
    fig, axes = plt.subplots(2, len(panels), figsize=(4.2 * len(panels), 6.4), squeeze=False)
    for j, (task, key) in enumerate(panels):
        naive = next((c for c in summary["cells"] if c["task"] == task and c["method"] == "naive"), None)
        lines = [f for f in found if (f[0], f[2]) == (task, key)]
        for i, (metric, label) in enumerate([("psnr", "PSNR (dB)"), ("lpips", "LPIPS")]):
            ax = axes[i][j]
            for _, method, _, rest, cells in lines:
                xs = [c["settings"][key] for c in cells]
                ys = [float("nan") if c[metric]["mean"] is None else c[metric]["mean"] for c in cells]
                ax.errorbar(xs, ys, yerr=[c[metric]["ci95"] or 0 for c in cells], marker="o", capsize=3,
                            label=method + (f" {rest}" if len(lines) > len({f[1] for f in lines}) else ""))
                if min(xs) > 0 and max(xs) >= 10 * min(xs):
                    ax.set_xscale("log")
            if naive is not None and naive[metric]["mean"] is not None:  # far off the curves' range: named only
                value, (low, high) = naive[metric]["mean"], ax.get_ylim()
                if low - (high - low) <= value <= high + (high - low):
                    ax.axhline(value, color="grey", ls="--", lw=1, label="naive")
                else:
                    ax.plot([], [], " ", label=f"naive: {value:.3g}")
            ax.set(xlabel=key, ylabel=label, title=task if i == 0 else None)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    run = summary["run"]
    fig.suptitle(f"{Path(run['model']).name}: {run['images']} images, steps {run['steps'] or 'solver default'}, "
                 f"{noise_text(run)}; mean and 95% interval over images", fontsize=9)
    return save_figure(fig, path)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="a folder of images (taken in file-name order)")
    p.add_argument("--out", required=True, type=arguments.output_name,
                   help="the run's folder: rows.csv, summary.md/.json, run.json, skipped.txt")
    p.add_argument("--tasks", default=None,
                   help="comma-separated tasks (default box-inpaint,random-inpaint,gaussian-blur,sr4; with --mask, "
                        "inpaint)")
    p.add_argument("--mask", default=None, metavar="FILE|FOLDER",
                   help="the masks of the task inpaint (white = known, black = missing): a mask image for every "
                        "image, or a folder with each image's own, named as the image; of the model's size, or of "
                        "the image's (then cropped and resized as it is)")
    p.add_argument("--methods", default="sdedit,scoreald,dps",
                   help="comma-separated solvers (sdedit,scoreald,dps; naive is always added)")
    p.add_argument("--set", nargs="+", action="extend", default=[], metavar="METHOD.KEY=V1,V2",
                   help="solver settings; several values make a grid of cells, e.g. sdedit.t0=400,500,600")
    p.add_argument("--task-option", nargs="+", action="extend", default=[], metavar="TASK.KEY=VALUE",
                   help="a degradation's own options, e.g. gaussian-blur.std=1.5 or box-inpaint.size=16 (KEY=VALUE "
                        "alone with one task); the README's task table lists each task's")
    add_range_arguments(p, "only the first N readable images (after --first/--last)")
    p.add_argument("--steps", type=arguments.positive, default=None,
                   help="solver steps (default: each solver's own, on a CPU too: 1000 for DPS and ScoreALD)")
    p.add_argument("--batch", type=arguments.positive, default=8, help="images per solver call (default 8)")
    add_noise_arguments(p, "each batch")
    p.add_argument("--size", type=arguments.integer(8, 4096), default=None,
                   help="image side (default: the prior's; another size only for fully convolutional networks)")
    add_prior_arguments(p, "cuda:LOCAL_RANK when available")
    p.add_argument("--save-images", type=arguments.count, default=0, metavar="K",
                   help="keep the restorations of the first K images as PNG under OUT/images/ (default 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    named = arguments.names(args.methods)
    if not named:
        raise ValueError(f"--methods names no method; give solver names (or {NAIVE} alone)")
    methods = [m for m in named if m != NAIVE]
    tasks = arguments.names(args.tasks) if args.tasks is not None else (
        [MASK_TASK] if args.mask is not None else ["box-inpaint", "random-inpaint", "gaussian-blur", "sr4"])
    summary = evaluate(args.data, args.out, tasks=tasks, methods=methods,
                       grid=parse_grid(args.set, methods), n=args.n, first=args.first, last=args.last,
                       seeds=args.seeds, steps=args.steps, batch=args.batch, model=args.model, config=args.config,
                       device=args.device, dtype=args.dtype, sigma_y=args.sigma_y, poisson=args.poisson,
                       size=args.size,
                       save=args.save_images, mask=args.mask, progress=not args.no_progress,
                       task_options=parse_task_options(args.task_option, tasks))
    return 1 if summary is not None and failed_cells(summary) else 0
