"""What the image verbs (restore, demo, sample, denoise, metrics, eval, reproduce) share: the model options, --set
settings, seeded generators, samples written to a folder and the scores they print."""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from .. import arguments
from ..devices import DTYPES
from ..io import save_image, write_text
from ..models import DEFAULT_MODEL
from ..solvers import SPECS, check_settings, sample, solver_settings


def generator(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def derive_seed(*parts) -> int:
    """A 63-bit seed from any JSON-able parts: the same parts give the same seed in every process."""
    return int.from_bytes(hashlib.sha256(json.dumps(parts).encode()).digest()[:8], "little") >> 1


def differences(there: dict, now: dict, keys=None) -> list[str]:
    """The settings (of `keys`, else of either dict) that a stored record and this run give differently."""
    return [f"{k}: {there.get(k)!r} there, {now.get(k)!r} now" for k in (keys or {**there, **now})
            if there.get(k) != now.get(k)]


def read_record(path: Path) -> dict:
    """The JSON object a command stored in `path` to recognise its run; ValueError if the file is not one."""
    try:
        record = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not a record this command wrote ({e}): delete it, or choose another --out") \
            from None
    if not isinstance(record, dict):
        raise ValueError(f"{path} is not a record this command wrote (a JSON {type(record).__name__}): delete it, or "
                         "choose another --out")
    return record


def sample_chunks(prior, n: int, *, batch: int, seed: tuple, skip=lambda start, stop: False, progress: bool = False,
                  **sampler) -> Iterator[tuple[int, Tensor]]:
    """(start, the samples start ... start + len - 1) for n samples from the prior drawn `batch` at a time, batch c
    from the seed derive_seed(*seed, c), so that each batch can be drawn again alone; a batch for which
    skip(start, stop) holds is not drawn. `sampler`: the keywords of `solvers.sample` (steps, sampler, eta)."""
    for c, start in enumerate(range(0, n, batch)):
        stop = min(start + batch, n)
        if skip(start, stop):
            continue
        if progress and n > batch:
            print(f"samples {start + 1}-{stop} of {n}", file=sys.stderr)
        yield start, sample(prior, stop - start, generator=generator(prior.device, derive_seed(*seed, c)),
                            progress=progress, **sampler)


def weights_digest(prior) -> str:
    """A short SHA-256 of the prior's network weights: tells two versions of one checkpoint file apart. An
    analytic prior (no network) is fixed by the code and named in the record: "analytic". Its buffers are not
    hashed: they are computed at load, and their last bits change with torch's thread count."""
    net = getattr(prior, "net", None)
    if net is None:
        return "analytic"
    h = hashlib.sha256()
    for name, value in net.state_dict().items():
        h.update(name.encode())
        h.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def sample_folder(prior, folder: Path, record: dict, n: int, *, batch: int, seed: tuple, progress: bool = False,
                  **sampler) -> list[Path]:
    """`sample_chunks` as folder/sample_00000.png ...: batches already there are kept, so an interrupted run
    continues where it stopped; a batch with a file missing (or not a whole PNG) is drawn again whole (a larger
    n makes the last batch larger), so that the folder holds what one run would. folder/samples.json keeps
    `record` (what fixes the samples) and the prior's weights; a folder of samples of other settings or weights,
    or of more than n samples, is refused."""
    record = {**record, "weights": weights_digest(prior)}
    kept = folder / "samples.json"
    drawn = sorted(p.name for p in folder.glob("sample_*.png"))
    if drawn and not kept.is_file():  # files of that name that no run of this command recorded: the user's
        raise ValueError(f"{folder} holds {drawn[0]} ... but no samples.json: files this command did not draw, "
                         "which it would overwrite; choose another folder")
    previous = read_record(kept) if kept.is_file() else None
    # A record without samples (a run stopped before its first batch) fixes nothing yet: it is replaced.
    differ = differences(previous, record) if previous is not None and drawn else []
    if differ:
        raise ValueError(f"{folder} holds samples of other settings or weights ({'; '.join(differ)}): rerun with "
                         "the same model and settings to continue them, or choose another folder")
    beyond = [name for name in drawn if name[7:-4].isdigit() and int(name[7:-4]) >= n]  # sample_NNNNN.png
    if beyond:
        raise ValueError(f"{folder} holds samples beyond the {n} asked for ({beyond[0]} ...): give --n as large as "
                         "before to keep them, or choose another folder")
    write_text(kept, json.dumps(record) + "\n")
    paths = [folder / f"sample_{i:05d}.png" for i in range(n)]
    done = lambda start, stop: all(readable_png(p) for p in paths[start:stop])
    for start, x in sample_chunks(prior, n, batch=batch, seed=seed, skip=done, progress=progress, **sampler):
        for p, xi in zip(paths[start:], x):
            save_image(xi, p)
    return paths


def readable_png(path: Path) -> bool:
    """Whether `path` is a whole PNG file (a copy cut short, or a full disk's, is drawn again)."""
    try:
        with Image.open(path, formats=["PNG"]) as image:
            image.load()
        return True
    except (OSError, SyntaxError, ValueError):
        return False


def parse_task_options(pairs: list[str], tasks: list[str]) -> dict[str, dict]:
    """`--task-option [TASK.]KEY=VALUE ...` -> {task: its operator's options (`make_operator`'s, e.g. a blur's
    std)}: values read as JSON where they parse (numbers), "A,B" as a pair (a box's position), text otherwise;
    KEY alone is the one task's (`check_task_options` tries them)."""
    options: dict[str, dict] = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        task, dot, key = name.rpartition(".")
        if not sep or not key or (dot and not task):
            raise ValueError(f"--task-option expects [TASK.]KEY=VALUE, got {pair!r}")
        if not dot and len(tasks) > 1:
            raise ValueError(f"--task-option {pair}: say which task's, as TASK.{key}=... (one of {', '.join(tasks)})")
        task = task or tasks[0]
        if task not in tasks:
            raise ValueError(f"--task-option {pair}: {task} is not a task of this run ({', '.join(tasks)})")
        key = key.replace("-", "_")
        if key in ("seed", "shape"):
            own = "--seed" if key == "seed" else "the model's image size"
            raise ValueError(f"--task-option {pair}: {key} is the run's own ({own}), not a task option")
        if key in options.setdefault(task, {}):
            raise ValueError(f"--task-option {task}.{key} is given twice; give each option once")
        try:  # "8,24" is the list [8, 24], as "[8, 24]" is
            options[task][key] = json.loads(f"[{value}]" if "," in value and not value.startswith("[") else value)
        except json.JSONDecodeError:
            options[task][key] = value
        if options[task][key] is None:
            raise ValueError(f"--task-option {pair}: give a value, or leave the option out for its default")
    return options


def task_title(task: str, options: dict | None) -> str:
    """A task's name with the options it was given, e.g. 'gaussian-blur (std=1.5)'."""
    return task + (f" ({', '.join(f'{k}={v}' for k, v in options.items())})" if options else "")


def check_task_options(options: dict[str, dict], shape: tuple[int, ...]) -> None:
    """Refuse (ValueError) task options that `make_operator` refuses for images of `shape`, before any work."""
    from ..tasks import make_operator
    for task, given in options.items():
        if task == "inpaint":
            raise ValueError("--task-option: the task inpaint takes its holes from --mask and has no options")
        try:
            op = make_operator(task, shape, **given)
        except (TypeError, ValueError) as e:
            raise ValueError(f"--task-option: {e}") from None
        with torch.no_grad():  # values in range that still break the arithmetic (a blur std of 1e-320)
            finite = bool(op.A(torch.full((1, *shape), 0.5)).isfinite().all())
        if not finite:
            raise ValueError(f"--task-option {task_title(task, given)}: the operator's measurement is not finite "
                             "(NaN or infinite): a value is too extreme")


def parse_settings(pairs: list[str], method: str) -> dict:
    """`--set key=value ...` -> {key: value}, values read as JSON where they parse (numbers, true, ...),
    each checked against the method's settings."""
    settings = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects key=value, got {pair!r}")
        key = key.replace("-", "_")
        named, dot, rest = key.partition(".")
        if dot and named == method:  # `eval`'s METHOD.KEY form, for the one method run here
            key = rest
        elif dot:
            raise ValueError(f"--set {pair}: this command runs {method}; write its settings as KEY=VALUE")
        if key in settings:
            raise ValueError(f"--set {key} is given twice; give each setting once")
        try:
            settings[key] = json.loads(value)
        except json.JSONDecodeError:
            settings[key] = value
    if "sigma_y" in settings:
        raise ValueError("--set sigma_y: use --sigma-y, which sets the measurement noise and the solver's model of it")
    if "steps" in settings:
        raise ValueError("--set steps: use --steps")
    known = [k for k in solver_settings(method) if k not in ("steps", "sigma_y")]
    unknown = [k for k in settings if k not in known]
    if unknown:
        raise ValueError(f"--set {', '.join(unknown)}: {method} has no such setting; its settings are "
                         f"{', '.join(known) or 'none'} (and --steps, --sigma-y)")
    check_settings(method, settings)
    return settings


def check_steps(prior, steps: int | None, method: str | None = None) -> None:
    """--steps must not exceed the prior's T (a chain has at most T steps); the TV baseline counts iterations."""
    T = prior.schedule.T
    if steps is not None and steps > T and method != "tv":
        raise ValueError(f"--steps {steps}: at most the prior's T = {T} diffusion steps")


def model_input(model) -> str | None:
    """The checkpoint file or folder a --model names (an input never to overwrite), or None for a name."""
    return str(model) if Path(str(model)).exists() else None


def quality(x: torch.Tensor, ref: torch.Tensor) -> dict[str, float | None]:
    """PSNR, SSIM and LPIPS of one image against a reference, as plain floats; None where a metric is
    undefined (PSNR of identical images, LPIPS of images under 31 pixels), so JSON output stays valid."""
    from ..metrics import image_metrics
    scores = {k: float(v[0]) for k, v in image_metrics(x, ref).items()}
    return {k: round(v, 4) if math.isfinite(v) else None for k, v in scores.items()}


def fmt(v: float | None, spec: str = ".4f") -> str:
    return "-" if v is None else format(v, spec)


CPU_STEPS = 100  # on a CPU, a run of more network evaluations than this runs this many steps


def cpu_steps(device: torch.device, steps: int | None, prior, method: str, settings: dict,
              note: bool = True) -> int | None:
    """The steps to run `method` with: `steps` when given; else, on a CPU, CPU_STEPS where the method's own run
    (`settings`: its settings for the task and prior, but steps) would evaluate the network more often than
    that (DPS's and ScoreALD's 1000 steps take minutes there), saying so when `note`; else None, the method's
    own (DDRM's 20 steps stay 20: it gets worse with more)."""
    if steps is not None or device.type != "cpu":
        return steps
    spec, cap = SPECS[method], min(CPU_STEPS, prior.schedule.T)  # no more steps than the prior's chain has
    own = spec.evaluations(prior.schedule, **settings)
    fewer = spec.evaluations(prior.schedule, **{**settings, "steps": cap})
    if own <= CPU_STEPS or fewer >= own:  # RePaint's own 100 steps are already CPU_STEPS
        return None
    if note:
        print(f"note: {method} runs {cap} steps ({fewer} network evaluations) on the CPU, where its own {own} "
              "would take minutes (--steps sets the count)", file=sys.stderr)
    return cap


def cpu_sample_steps(device: torch.device, steps: int | None, prior, note: bool = True) -> int | None:
    """The unconditional sampler's steps: `steps` when given; else, on a CPU, CPU_STEPS where the prior has more
    (all 1000 take minutes there), saying so when `note`; else None, all of the prior's T."""
    if steps is not None or device.type != "cpu" or prior.schedule.T <= CPU_STEPS:
        return steps
    if note:
        print(f"note: sampling with {CPU_STEPS} of the prior's {prior.schedule.T} steps on the CPU, where all of them "
              f"would take minutes (--steps {prior.schedule.T} for all)", file=sys.stderr)
    return CPU_STEPS


def add_noise_arguments(p: argparse.ArgumentParser, averaged_over: str) -> None:
    """--sigma-y and --poisson: the measurement noise, Gaussian or photon counting (`averaged_over`: what the
    Poisson noise's std the solvers assume is averaged over)."""
    p.add_argument("--sigma-y", type=arguments.noise_std, default=None,
                   help="measurement noise std on [-1, 1] images (0.05; with --poisson, the std the solvers assume: "
                        f"by default the Poisson noise's average over {averaged_over}, sqrt(2 (mean(y) + 1) / RATE))")
    p.add_argument("--poisson", type=arguments.photon_rate, default=None, metavar="RATE",
                   help="photon-counting (Poisson) noise instead of Gaussian: RATE photons at full brightness, "
                        "so brighter pixels are noisier (e.g. 255 is the DPS code's Poisson rate 1)")


def add_prior_arguments(p: argparse.ArgumentParser, default_device: str = "cuda when available") -> None:
    """--model, --config, --device, --dtype and --threads: the prior to load, where and how it runs."""
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"a built-in name (see `diffprior models`) or a checkpoint path (default: {DEFAULT_MODEL})")
    p.add_argument("--config", default=None, help="architecture of a guided-diffusion .pt file: a built-in config "
                   "name (ffhq256, imagenet256-uncond) or a model_config.yaml")
    p.add_argument("--device", type=arguments.device, default="auto",
                   help=f"cpu, cuda, cuda:1, ... (default: {default_device})")
    p.add_argument("--dtype", choices=DTYPES, default="auto", help="the network's precision: fp32, bf16 "
                   "(autocast), or auto: bf16 where the device computes it natively (CUDA; CPUs with AVX-512 BF16 "
                   "or AMX), else fp32 (default auto)")
    arguments.add_threads_argument(p)


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """The prior's options, --seed and --overwrite: what every image verb takes."""
    add_prior_arguments(p)
    p.add_argument("--seed", type=arguments.seed, default=0, help="random seed (default 0)")
    arguments.add_overwrite_argument(p)


def add_range_arguments(p: argparse.ArgumentParser, limit_help: str) -> None:
    """--limit, --first, --last and --seeds: which images of a folder are run, and with how many seeds."""
    p.add_argument("--limit", dest="n", type=arguments.positive, default=None, metavar="N", help=limit_help)
    p.add_argument("--first", default=None, help="first file name (without suffix) of a range, e.g. 009501")
    p.add_argument("--last", default=None, help="last file name (without suffix) of a range, e.g. 010000")
    p.add_argument("--seeds", type=arguments.positive, default=1, help="K seeds per image: 0 .. K-1 (default 1)")


def image_side(prior, command: str) -> int:
    """The side of the square grey or RGB images `prior` models, which the image commands read, restore and
    write; another prior is refused, pointing to the Python API, which takes any image shape."""
    c, h, w = prior.shape
    if h != w or c not in (1, 3):
        raise ValueError(f"diffprior {command} works on square grey or RGB images, and this prior models images of "
                         f"shape {c}x{h}x{w}: restore them with the Python API (dp.solve with tensors of shape "
                         f"(B, {c}, {h}, {w})), or draw samples with `diffprior sample`")
    return h


def check_grey_task(prior, task: str) -> None:
    """Colourisation needs a prior of colour images."""
    if task == "colorize" and prior.shape[0] == 1:
        raise ValueError("colorize restores colour, and this prior models grey images: choose another task")


def naive_or_none(op, y):
    """The operator's naive reconstruction, or None for the (non-linear) operators that have none."""
    try:
        return op.naive(y)
    except NotImplementedError:
        return None
