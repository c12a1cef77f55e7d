"""The speed benchmark: how long a solver's step takes, per image, next to the network's own cost.

For each batch size, the method runs a few warm-up steps (not counted: they include torch.compile's and
cuDNN's one-off work), then `steps` timed steps, with the device synchronised before and after the timed
region. Reported per batch size:
  ms_per_step_per_image         wall time of one solver step divided by the batch size
  images_per_second             finished 1000-step images per second at that rate
  seconds_per_1000_step_image   extrapolated from the timed steps (a step costs the same at every t)
  forward_ms_per_image          the network's forward pass alone, under the same settings (no grad)
  forward_backward_ms_per_image DPS only: forward plus the backward pass to the input (a DPS step's floor)
  peak_memory_bytes             CUDA: torch.cuda.max_memory_allocated over the timed run;
                                CPU: the process's maximum resident set size so far (ru_maxrss)
`--compare-fp32` runs the same seed in fp32 and bf16 and reports the PSNR between the two results (and of
each against `--reference`, the clean image the measurement is made from, when given).

`--random-weights --config NAME` builds a network with random weights (nothing is downloaded): an ADM
config ("ffhq256", the DPS FFHQ-256 UNet; "imagenet256-uncond"; a model_config.yaml) or
"small-unet:NAME" (the compact UNet's "tiny", "default" or "large"). Random weights cost the same compute
as trained ones; every layer is drawn at random, including those the architectures zero-initialise, so
eps is not identically zero.
"""

from __future__ import annotations

import argparse
import inspect
import json
import platform
import resource
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from .. import arguments
from ..devices import DTYPES, describe_device, pick_device, resolve_dtype, sync
from ..io import write_text
from ..models import DEFAULT_MODEL, load_prior
from ..operators import measure
from ..tasks import TASKS, make_operator
from ..prior import NetworkPrior, check_compile_mode
from ..schedule import Schedule
from ..solvers import SOLVERS, sample, settings_for, tuned_settings

METHODS = ("dps", "sdedit", "scoreald", "sample")  # others in SOLVERS work if they take `steps`


# -- the prior -------------------------------------------------------------------------------------------
def random_prior(config: str | dict, seed: int = 0) -> NetworkPrior:
    """A prior whose network has random weights: an ADM config (name, YAML or settings) or "small-unet:NAME"."""
    from ..networks.adm import adm_config, build_adm
    from ..networks.small import SmallUNet, network_config

    with torch.random.fork_rng(devices=[]):  # leave the global random state alone
        torch.manual_seed(seed)
        if isinstance(config, str) and config.startswith("small-unet:"):
            settings = network_config(config.split(":", 1)[1])
            net, learned, size = SmallUNet(**settings), False, int(settings["image_size"])
        else:
            settings = adm_config(config)
            net, learned, size = build_adm(settings), bool(settings["learn_sigma"]), int(settings["image_size"])
        for m in net.modules():  # the zero-initialised layers get the default random initialisation too
            if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)) and not bool(m.weight.any()):
                m.reset_parameters()
    meta = {"architecture": "random", "network": settings, "source": f"random weights (seed {seed})"}
    return NetworkPrior(net.eval(), Schedule.linear(1000), (3, size, size), learned_variance=learned, config=meta)


def build_prior(args: argparse.Namespace, device: torch.device) -> NetworkPrior:
    if args.random_weights:
        if not args.config:
            raise ValueError("--random-weights needs --config (ffhq256, imagenet256-uncond, a YAML file, "
                             "or small-unet:tiny|default|large)")
        prior = random_prior(args.config, args.seed)
    else:
        prior = load_prior(args.model, config=args.config)
    if not isinstance(prior, NetworkPrior):
        raise ValueError(f"{args.model} is not a network prior: there is no network to time")
    return prior.to(device)


# -- timing ----------------------------------------------------------------------------------------------
def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds that fn() takes, with the device synchronised before and after."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def runner(method: str, prior: NetworkPrior, task: str, y: Tensor, seed: int) -> Callable[[int], Tensor]:
    """run(steps) -> the method's result for y, from a fresh generator seeded with `seed`."""
    device = y.device
    op = make_operator(task, prior.shape, seed=seed).to(device)
    if method != "sample":
        solver = SOLVERS[method]
        if "steps" not in inspect.signature(solver).parameters:
            raise ValueError(f"{method} has no `steps` setting to time")

    def run(steps: int) -> Tensor:
        g = torch.Generator(device=device).manual_seed(seed)
        if method == "sample":
            return sample(prior, y.shape[0], steps=steps, generator=g)
        return solver(prior, op, y, **settings_for(method, task, tuned_settings(prior), steps=steps, generator=g))
    return run


def network_floor(prior: NetworkPrior, batch: int, *, backward: bool, reps: int, warmup: int) -> float:
    """Milliseconds per image of the network's forward pass (no grad), or of forward + backward to x."""
    device = prior.device
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(batch, *prior.shape, generator=g, device=device)
    t = prior.schedule.T // 2
    if backward:
        x.requires_grad_(True)
        v = torch.randn_like(x)

        def step():
            with torch.enable_grad():
                (grad,) = torch.autograd.grad(prior.eps(x, t), x, grad_outputs=v)
            return grad
    else:
        def step():
            with torch.no_grad():
                return prior.eps(x, t)
    for _ in range(warmup):
        step()
    seconds = timed(lambda: [step() for _ in range(reps)], device)
    return 1000 * seconds / reps / batch


def peak_memory(device: torch.device) -> tuple[int, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "cuda max_memory_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process max RSS (whole run so far)"


def measurement(prior: NetworkPrior, task: str, batch: int, seed: int, sigma_y: float,
                clean: Tensor | None = None) -> Tensor:
    """y = A(x) + sigma_y n for `clean` (repeated over the batch) or a fixed random image."""
    device = prior.device
    g = torch.Generator(device=device).manual_seed(seed + 1)
    if clean is None:
        clean = torch.rand(1, *prior.shape, generator=g, device=device) * 2 - 1
    x = clean.to(device).expand(batch, *prior.shape).contiguous()
    return measure(make_operator(task, prior.shape, seed=seed).to(device), x, sigma_y, g)


def bench_one(prior: NetworkPrior, method: str, task: str, batch: int, args) -> dict:
    """One method at one batch size: warm-up, timed steps, network floors, peak memory."""
    device = prior.device
    y = measurement(prior, task, batch, args.seed, args.sigma_y)
    run = runner(method, prior, task, y, args.seed)
    warm = timed(lambda: run(args.warmup), device) if args.warmup else 0.0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = timed(lambda: run(args.steps), device)
    memory, memory_kind = peak_memory(device)
    step_ms = 1000 * seconds / args.steps
    row = {
        "method": method, "task": None if method == "sample" else task, "batch": batch, "steps": args.steps,
        "warmup_steps": args.warmup, "warmup_seconds": round(warm, 4), "seconds": round(seconds, 4),
        "ms_per_step": round(step_ms, 4), "ms_per_step_per_image": round(step_ms / batch, 4),
        "images_per_second": round(batch / step_ms, 6),  # 1000-step images: batch / (1000 steps x step_ms / 1000)
        "image_steps_per_second": round(batch * args.steps / seconds, 3),
        "seconds_per_1000_step_image": round(step_ms / batch, 4),  # 1000 steps x (ms / image) / 1000
        "peak_memory_bytes": int(memory), "peak_memory_kind": memory_kind,
    }
    if args.forward_reps:
        fwd = network_floor(prior, batch, backward=False, reps=args.forward_reps, warmup=args.warmup)
        row["forward_ms_per_image"] = round(fwd, 4)
        floor = fwd
        if method == "dps":
            floor = network_floor(prior, batch, backward=True, reps=args.forward_reps, warmup=args.warmup)
            row["forward_backward_ms_per_image"] = round(floor, 4)
        row["step_over_floor"] = round(step_ms / batch / floor, 3)
    return row


def psnr_or_none(x: Tensor, ref: Tensor) -> float | None:
    """Mean PSNR (dB) over the batch; None when the images are identical (infinite PSNR)."""
    from ..metrics import psnr
    value = float(psnr(x.float().clamp(-1, 1), ref.float().clamp(-1, 1)).mean())
    return round(value, 4) if value != float("inf") else None


def compare_dtypes(prior: NetworkPrior, method: str, task: str, batch: int, args, *, dtype: str = "bf16",
                   clean: Tensor | None = None) -> dict:
    """The same seed and measurement run in fp32 and in `dtype`: the PSNR between the two results, and of
    each against `clean` when given. The prior's speed settings are restored afterwards."""
    before = prior.speed
    y = measurement(prior, task, batch, args.seed, args.sigma_y, clean)
    results = {}
    try:
        for name in ("fp32", dtype):
            prior.configure(dtype=name, channels_last=before.channels_last, compile=before.compile)
            results[name] = runner(method, prior, task, y, args.seed)(args.compare_steps)
    finally:
        prior.configure(dtype=before.dtype, channels_last=before.channels_last, compile=before.compile)
    out = {"method": method, "task": None if method == "sample" else task, "batch": batch,
           "steps": args.compare_steps, "dtypes": ["fp32", dtype],
           "psnr_between_db": psnr_or_none(results[dtype], results["fp32"]),
           "max_abs_difference": round(float((results[dtype] - results["fp32"]).abs().max()), 6)}
    if clean is not None:
        ref = clean.to(prior.device).expand_as(results["fp32"])
        out["psnr_vs_reference_db"] = {name: psnr_or_none(x, ref) for name, x in results.items()}
    return out


# -- the environment -------------------------------------------------------------------------------------
def environment(device: torch.device) -> dict:
    from ..version import __version__
    return {"device": str(device), "device_name": describe_device(device), "torch": torch.__version__,
            "cuda": torch.version.cuda, "diffprior": __version__, "python": platform.python_version(),
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "tf32_conv": torch.backends.cudnn.allow_tf32, "tf32_matmul": torch.backends.cuda.matmul.allow_tf32}


def table_row(row: dict) -> str:
    if "error" in row:
        return f"{row['method']:9s} {row['batch']:5d}  {row['error']}"
    fwd, fwd_bwd = ("-" if row.get(k) is None else f"{row[k]:.2f}"
                    for k in ("forward_ms_per_image", "forward_backward_ms_per_image"))
    return (f"{row['method']:9s} {row['batch']:5d} {row['ms_per_step_per_image']:12.2f} {row['images_per_second']:11.4f} "
            f"{row['seconds_per_1000_step_image']:16.2f} {fwd:>11s} {fwd_bwd:>9s} {row['peak_memory_bytes'] / 2 ** 20:9.0f}")


def write_json(doc: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(doc, indent=2) + "\n")


# -- command line ----------------------------------------------------------------------------------------
PARSER = dict(help="time a solver's steps and the network's forward pass, per batch size",
              description=__doc__.split("\n\n")[0])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None,
                        help=f"a built-in name or checkpoint path (see `diffprior models`; default {DEFAULT_MODEL})")
    parser.add_argument("--random-weights", action="store_true",
                        help="a network with random weights, built from --config (no download)")
    parser.add_argument("--config", default=None, help="with --random-weights: ffhq256, imagenet256-uncond, an ADM "
                        "model_config.yaml, or small-unet:tiny|default|large; else a .pt checkpoint's architecture")
    parser.add_argument("--method", default="dps", help=f"comma-separated: {', '.join(METHODS)}, or another solver "
                        "that takes steps (default dps)")
    parser.add_argument("--task", default="box-inpaint", help="the degradation the solvers invert (box-inpaint)")
    parser.add_argument("--batch", type=arguments.integers(1), default=[1, 8],
                        help="comma-separated batch sizes (default 1,8)")
    parser.add_argument("--steps", type=arguments.positive, default=20, help="timed steps per batch size (default 20)")
    parser.add_argument("--warmup", type=arguments.count, default=3, help="untimed warm-up steps first (default 3)")
    parser.add_argument("--forward-reps", type=arguments.count, default=10,
                        help="network passes timed for the forward floor (default 10; 0 skips it)")
    parser.add_argument("--dtype", choices=DTYPES, default="fp32", help="the network's precision: fp32, bf16 "
                        "(autocast; needs native bf16: CUDA, or a CPU with AVX-512 BF16 or AMX), or auto (bf16 where "
                        "native) (default fp32)")
    parser.add_argument("--compile", nargs="?", const="default", default=None, metavar="MODE",
                        help="torch.compile the network (MODE: default, max-autotune, ...)")
    parser.add_argument("--channels-last", action="store_true", help="NHWC memory format for the network")
    parser.add_argument("--cudnn-benchmark", action="store_true",
                        help="let cuDNN pick the fastest convolution algorithms (torch.backends.cudnn.benchmark)")
    parser.add_argument("--sigma-y", type=arguments.noise_std, default=0.05, help="measurement noise std (0.05)")
    parser.add_argument("--compare-fp32", action="store_true",
                        help="instead of timing: the PSNR between fp32 and bf16 results of the same seed")
    parser.add_argument("--compare-steps", type=arguments.positive, default=None,
                        help="steps of the comparison (default --steps)")
    parser.add_argument("--reference", default=None, help="with --compare-fp32: the clean image to measure and score")
    parser.add_argument("--out", default=None, type=arguments.output_name,
                        help="write the results as JSON to this file")
    arguments.add_overwrite_argument(parser)
    parser.add_argument("--device", type=arguments.device, default="auto",
                        help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    parser.add_argument("--seed", type=arguments.seed, default=0, help="random weights, measurement and solver (0)")
    arguments.add_threads_argument(parser)


def run(args: argparse.Namespace) -> int:
    if args.out:
        arguments.check_outputs([args.out], overwrite=args.overwrite, images=False)
    device = pick_device(args.device)
    methods = arguments.names(args.method)
    unknown = [m for m in methods if m != "sample" and m not in SOLVERS]
    if unknown:
        raise ValueError(f"unknown method {', '.join(unknown)}; choose from sample or a solver ({', '.join(SOLVERS)})")
    if not methods:
        raise ValueError(f"--method names no method; choose from sample or a solver ({', '.join(SOLVERS)})")
    if args.task not in TASKS:
        raise ValueError(f"unknown task {args.task}; choose from {', '.join(TASKS)}")
    if args.reference and not args.compare_fp32:
        raise ValueError("--reference is the clean image of --compare-fp32: give both, or neither")
    if args.steps < 1 or args.warmup < 0 or not args.batch or min(args.batch) < 1:
        raise ValueError("--steps and --batch must be positive, --warmup non-negative")
    if args.compile:
        try:
            check_compile_mode(args.compile)
        except ValueError as e:
            raise ValueError(f"--compile: {e}") from None
    if args.random_weights and args.model:
        raise ValueError("--random-weights builds its network from --config: drop --model (or --random-weights, "
                         "to time that model)")
    args.model = None if args.random_weights else args.model or DEFAULT_MODEL
    if args.compile:  # one graph per batch size and grad mode: allow more than dynamo's default of 8
        from torch import _dynamo
        _dynamo.config.cache_size_limit = max(_dynamo.config.cache_size_limit, 64)
    torch.backends.cudnn.benchmark = bool(args.cudnn_benchmark)
    prior = build_prior(args, device)
    from .evaluate import why_not  # the check eval and demo make
    unfit = [f"{m}: {why}" for m in methods if m != "sample" and (why := why_not(m, args.task, prior.shape[-1],
                                                                                  args.sigma_y))]
    if unfit:  # before the table's header, not in its first row
        raise ValueError(f"--task {args.task}: " + "; ".join(unfit))
    args.dtype = resolve_dtype(args.dtype, device)
    prior.configure(dtype=args.dtype, channels_last=args.channels_last, compile=args.compile)
    doc = {"benchmark": "speed", **environment(device),
           "model": args.model, "config": args.config,
           "random_weights": bool(args.random_weights),
           "parameters": sum(p.numel() for p in prior.net.parameters()), "image_shape": list(prior.shape),
           "settings": {"dtype": args.dtype, "channels_last": args.channels_last, "compile": args.compile,
                        "cudnn_benchmark": args.cudnn_benchmark, "steps": args.steps, "warmup": args.warmup,
                        "forward_reps": args.forward_reps, "sigma_y": args.sigma_y, "seed": args.seed,
                        "threads": torch.get_num_threads()},
           "note": f"seconds_per_1000_step_image is extrapolated from {args.steps} timed steps "
                   "(a step costs the same at every timestep); images_per_second counts 1000-step images"}
    save = (lambda: write_json(doc, Path(args.out))) if args.out else (lambda: None)
    if args.compare_fp32:
        args.compare_steps = args.compare_steps or args.steps
        clean = None
        if args.reference:
            from ..io import load_image
            clean = load_image(args.reference, prior.shape[-1])
        doc["comparisons"] = [compare_dtypes(prior, m, args.task, args.batch[0], args, clean=clean) for m in methods]
        for c in doc["comparisons"]:
            print(f"{c['method']:9s} batch {c['batch']:3d}  {c['steps']} steps  PSNR(bf16, fp32) = "
                  f"{c['psnr_between_db']} dB" + (f"  vs reference {c['psnr_vs_reference_db']}" if clean is not None else ""))
    else:
        doc["runs"] = []
        print(f"{doc['device_name']}  torch {torch.__version__}  {args.dtype}"
              f"{'  compile=' + args.compile if args.compile else ''}{'  channels_last' if args.channels_last else ''}")
        print(f"{'method':9s} {'batch':>5s} {'ms/step/img':>12s} {'img/s@1000':>11s} {'s/1000-step img':>16s} "
              f"{'fwd ms/img':>11s} {'fwd+bwd':>9s} {'peak MB':>9s}", flush=True)
        for method in methods:
            for batch in args.batch:
                try:
                    row = bench_one(prior, method, args.task, batch, args)
                except torch.cuda.OutOfMemoryError:
                    row = {"method": method, "batch": batch, "error": "out of memory"}
                    torch.cuda.empty_cache()
                doc["runs"].append(row)
                save()  # after every row: a run stopped by a time limit keeps what it measured
                print(table_row(row), flush=True)
        print(doc["note"])
    save()
    return 0
