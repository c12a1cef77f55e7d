"""The `diffprior` command line: restore, demo, sample, denoise, metrics, models (and train)."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

from . import __version__, arguments
from .devices import pick_device
from .io import atomic_write, center_square, image_grid, load_mask, open_image, pil_to_tensor, save_image
from .models import DEFAULT_MODEL, load_prior
from .operators import Colorize, Inpaint, measure
from .tasks import TASKS, make_operator
from .solvers import SOLVERS, check_settings, denoise, sample, settings_for, solve


# -- shared helpers ---------------------------------------------------------------------------------
def generator(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def parse_settings(pairs: list[str], method: str) -> dict:
    """`--set key=value ...` -> {key: value}, values read as JSON where they parse (numbers, true, ...),
    each checked against the method's settings."""
    settings = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects key=value, got {pair!r}")
        try:
            settings[key.replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            settings[key.replace("-", "_")] = value
    if "sigma_y" in settings:
        raise ValueError("--set sigma_y: use --sigma-y, which sets the measurement noise and the solver's model of it")
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
    from .metrics import image_metrics
    scores = {k: float(v[0]) for k, v in image_metrics(x, ref).items()}
    return {k: round(v, 4) if math.isfinite(v) else None for k, v in scores.items()}


def fmt(v: float | None, spec: str = ".4f") -> str:
    return "-" if v is None else format(v, spec)


def cpu_steps_note(device: torch.device, steps: int | None, cpu_default: int) -> int | None:
    """On a CPU, run `cpu_default` steps unless the user chose; say so."""
    if steps is None and device.type == "cpu":
        print(f"note: running {cpu_default} steps on the CPU (the papers use 1000; pass --steps 1000 for those)",
              file=sys.stderr)
        return cpu_default
    return steps


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"a built-in name (see `diffprior models`) or a checkpoint path (default: {DEFAULT_MODEL})")
    p.add_argument("--config", default=None, help="architecture of a guided-diffusion .pt file: a built-in config "
                   "name (ffhq256, imagenet256-uncond) or a model_config.yaml")
    p.add_argument("--device", type=arguments.device, default="auto",
                   help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    p.add_argument("--seed", type=arguments.seed, default=0, help="random seed (default 0)")
    arguments.add_overwrite_argument(p)


# -- restore ----------------------------------------------------------------------------------------
# What `restore --measured` takes as its input: the low-resolution image for super-resolution; a photo of
# any size for a drawn mask or a grey photo (centre-cropped and resized like a clean input, the mask with
# it); the model's own size for every other task, whose operator (blur kernel, seeded mask, noise level) is
# defined at that resolution.
MEASURED_ANY_SIZE = ("inpaint", "colorize")


def measured_size(task: str, op, size: int) -> int | None:
    """The side a --measured input of `task` must have, or None for any size."""
    if task in MEASURED_ANY_SIZE:
        return None
    return size // op.factor if hasattr(op, "factor") else size


def cmd_restore(args) -> int:
    device = pick_device(args.device)
    if args.mask is not None and args.task not in (None, "inpaint"):
        raise ValueError("--mask defines an inpainting task: leave out --task or use --task inpaint")
    task = "inpaint" if args.mask is not None else args.task
    if task is None:
        raise ValueError("say which degradation with --task (one of: " + ", ".join(TASKS) + ") or give --mask")
    if task == "inpaint" and args.mask is None:
        raise ValueError("--task inpaint needs --mask MASK.png (white = known pixels, black = holes)")
    user_settings = parse_settings(args.set, args.method)
    out = Path(args.out)
    outputs = {"restored": out, "figure": out.with_name(out.stem + "_figure.png")}
    if args.samples > 1:
        outputs["std"] = out.with_name(out.stem + "_std.png")
        if not args.measured:
            outputs["calibration"] = out.with_name(out.stem + "_calibration.png")
    arguments.check_outputs(outputs.values(), inputs=[args.input, args.mask, model_input(args.model)],
                            overwrite=args.overwrite)
    photo = open_image(args.input)

    prior = load_prior(args.model, device, config=args.config)
    size = prior.shape[-1]
    gen = generator(device, args.seed)
    op = (Inpaint(load_mask(args.mask, (size, size), photo.size)) if task == "inpaint"
          else make_operator(task, (3, size, size), seed=args.seed)).to(device)
    check_steps(prior, args.steps, args.method)
    steps = args.steps if args.method == "tv" else cpu_steps_note(device, args.steps, 100)
    settings = settings_for(args.method, task, steps=steps, **user_settings)
    check_settings(args.method, settings, prior.schedule.T)

    x = None
    if args.measured:  # the input is already degraded: it is y
        side = measured_size(task, op, size)
        if side is not None and photo.size != (side, side):
            raise ValueError(f"--measured --task {task} takes {'the low-resolution ' if side != size else ''}"
                             f"image of {side}x{side} pixels for this {size}x{size} model; {args.input} is "
                             f"{photo.size[0]}x{photo.size[1]}")
        y = pil_to_tensor(center_square(photo, side or size)).to(device)
        if isinstance(op, (Inpaint, Colorize)):
            y = op.A(y)  # the holes (or the colours) carry nothing
    else:
        x = pil_to_tensor(center_square(photo, size)).to(device)
        y = measure(op, x, args.sigma_y, gen)
    naive = naive_or_none(op, y)
    start = time.perf_counter()
    std = None
    if args.samples > 1:  # K posterior samples in one batch: their mean is the restoration
        from .uncertainty import posterior_samples
        samples = posterior_samples(args.method, prior, op, y, args.samples, sigma_y=args.sigma_y, generator=gen,
                                    progress=not args.json, **settings)
        restored, std = samples.mean(0, keepdim=True), samples.std(0)
    else:
        restored = solve(args.method, prior, op, y, sigma_y=args.sigma_y, generator=gen, progress=not args.json,
                         **settings)
    seconds = time.perf_counter() - start

    save_image(restored, out)
    from .figures import displayable, image_table
    from .metrics import residual
    report = {"task": task, "method": args.method, "model": str(args.model), "settings": settings,
              "sigma_y": args.sigma_y, "seed": args.seed, "seconds": round(seconds, 3)}
    for name, img in (("naive", naive), ("restored", restored)):
        if img is not None:
            report[name] = quality(img, x) if x is not None else {}
            report[name]["residual"] = round(float(residual(op, img, y)[0]), 4)
    written = [out]
    if std is not None:
        from .uncertainty import calibration, calibration_figure, std_image
        written.append(save_image(std_image(std), outputs["std"]))
        report["uncertainty"] = {"samples": args.samples, "mean_std": round(float(std.mean()), 4)}
        if x is not None:
            cal = calibration(restored[0], std, x[0])
            report["uncertainty"]["coverage90"] = round(cal["coverage90"], 4)
            written.append(calibration_figure(cal, outputs["calibration"],
                                              title=f"{task} / {args.method}, {args.samples} samples"))
    figure = outputs["figure"]
    cols = ([x] if x is not None else []) + [displayable(y, (size, size)), naive, restored]
    titles = (["input"] if x is not None else []) + ["measurement", "naive",
                                                      args.method + (" (mean)" if std is not None else "")]
    captions = ([""] if x is not None else []) + [""] + [
        f"{fmt(report[k].get('psnr'), '.2f')} dB" if x is not None and k in report else "" for k in ("naive", "restored")]
    if std is not None:
        cols, titles, captions = cols + [std_image(std)], titles + ["posterior std"], captions + [
            f"mean {report['uncertainty']['mean_std']:.3f}"]
    image_table([cols], figure, col_titles=titles, captions=[captions], cell=2.0)
    written.append(figure)
    if args.json:
        print(json.dumps(report))
    else:
        print(f"{task} / {args.method} on {args.input} ({size}x{size}, {seconds:.1f} s)")
        for k in ("naive", "restored"):
            if k in report:
                print(f"  {k:9s} " + "  ".join(f"{m} {fmt(v)}" for m, v in report[k].items()))
        if std is not None:
            print("  posterior " + "  ".join(f"{m} {v}" for m, v in report["uncertainty"].items()))
        print("wrote " + ", ".join(str(p) for p in written))
    return 0


def naive_or_none(op, y):
    """The operator's naive reconstruction, or None for the (non-linear) operators that have none."""
    try:
        return op.naive(y)
    except NotImplementedError:
        return None


# -- demo -------------------------------------------------------------------------------------------
def cmd_demo(args) -> int:
    from .figures import displayable, image_table
    device = pick_device(args.device)
    tasks, methods = args.tasks.split(","), args.methods.split(",")
    for given, known, what in ((tasks, TASKS, "--tasks"), (methods, SOLVERS, "--methods")):
        unknown = [v for v in given if v not in known]
        if unknown or not given:
            raise ValueError(f"{what}: unknown {', '.join(unknown)}; choose from {', '.join(known)}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} is a file: the demo writes a folder")
    arguments.check_outputs([out / "demo.png", out / "demo.md", out / "demo.json"], inputs=[model_input(args.model)],
                  overwrite=args.overwrite, images=False)
    prior = load_prior(args.model, device, config=args.config)
    check_steps(prior, args.steps)
    steps = cpu_steps_note(device, args.steps, 100)
    # Every random draw has its own generator, seeded by what it is for (the image; each task's measurement;
    # each method on each task), so a result does not depend on which other tasks and methods ran before it.
    from .evaluate import derive_seed
    size = prior.shape[-1]
    if hasattr(prior, "sample") and not prior.bounded:  # an analytic prior draws exactly
        x = prior.sample(1, torch.Generator().manual_seed(args.seed)).float().to(device)
    else:
        print(f"drawing a clean image from {args.model} (100 DDIM steps) ...", file=sys.stderr)
        x = sample(prior, 1, steps=100, sampler="ddim", generator=generator(device, args.seed), progress=True)
    rows, captions, table = [], [], []
    for task in tasks:
        op = make_operator(task, (3, size, size), seed=args.seed).to(device)
        y = measure(op, x, args.sigma_y, generator(device, derive_seed("measure", args.seed, task)))
        naive = op.naive(y)
        row, cap = [x, displayable(y, (size, size)), naive], ["", "", ""]
        scores = quality(naive, x)
        table.append({"task": task, "method": "naive", **scores, "seconds": 0.0})
        cap[2] = f"{fmt(scores['psnr'], '.1f')} dB / {fmt(scores['lpips'], '.2f')}"
        for method in methods:
            start = time.perf_counter()
            gen = generator(device, derive_seed("solve", args.seed, task, method))
            restored = solve(method, prior, op, y, sigma_y=args.sigma_y, generator=gen, progress=True,
                             **settings_for(method, task, steps=steps))
            seconds = time.perf_counter() - start
            scores = quality(restored, x)
            table.append({"task": task, "method": method, **scores, "seconds": round(seconds, 2)})
            row.append(restored)
            cap.append(f"{fmt(scores['psnr'], '.1f')} dB / {fmt(scores['lpips'], '.2f')}")
            print(f"{task:15s} {method:9s} PSNR {fmt(scores['psnr'], '6.2f')}  SSIM {fmt(scores['ssim'], '.3f')}  "
                  f"LPIPS {fmt(scores['lpips'], '.3f')}  ({seconds:.1f} s)", file=sys.stderr)
        rows.append(row)
        captions.append(cap)
    figure = image_table(rows, out / "demo.png", col_titles=["truth", "measurement", "naive", *methods],
                         row_titles=args.tasks.split(","), captions=captions,
                         title=f"{args.model}: PSNR dB / LPIPS, {steps or 'all'} steps, sigma_y = {args.sigma_y}")
    lines = ["| task | method | PSNR | SSIM | LPIPS | seconds |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['task']} | {r['method']} | {fmt(r['psnr'], '.2f')} | {fmt(r['ssim'], '.3f')} | {fmt(r['lpips'], '.3f')} | {r['seconds']} |"
              for r in table]
    settings = {"model": str(args.model), "steps": steps, "sigma_y": args.sigma_y, "seed": args.seed,
                "device": str(device), "command": "diffprior " + " ".join(sys.argv[1:])}
    doc = json.dumps({"settings": settings, "rows": table}, indent=2) + "\n"
    atomic_write(out / "demo.md", lambda tmp: Path(tmp).write_text("\n".join(lines) + "\n"))
    atomic_write(out / "demo.json", lambda tmp: Path(tmp).write_text(doc))
    print("\n".join(lines))
    print(f"wrote {figure}, {out / 'demo.md'} and {out / 'demo.json'}")
    return 0


# -- sample, denoise, metrics, models ---------------------------------------------------------------
def cmd_sample(args) -> int:
    device = pick_device(args.device)
    arguments.check_outputs([args.out], inputs=[model_input(args.model)], overwrite=args.overwrite)
    prior = load_prior(args.model, device, config=args.config)
    check_steps(prior, args.steps)
    x = sample(prior, args.n, steps=args.steps, sampler=args.sampler, eta=args.eta,
               generator=generator(device, args.seed), progress=True)
    save_image(image_grid(x, nrow=args.nrow), args.out)
    print(f"wrote {args.n} samples to {args.out}")
    return 0


def cmd_denoise(args) -> int:
    device = pick_device(args.device)
    arguments.check_outputs([args.out], inputs=[args.input, model_input(args.model)], overwrite=args.overwrite)
    photo = open_image(args.input)
    prior = load_prior(args.model, device, config=args.config)
    T = prior.schedule.T
    if not 0 <= args.t < T:
        raise ValueError(f"--t {args.t}: a timestep in [0, {T - 1}] (the prior has T = {T})")
    x = pil_to_tensor(center_square(photo, prior.shape[-1])).to(device)
    noisy, x0_hat = denoise(prior, x, args.t, generator=generator(device, args.seed))
    a = prior.schedule.abar_at(args.t)
    noisy_view = noisy / a ** 0.5  # x_t rescaled to the data's range for viewing and scoring
    save_image(x0_hat, args.out)
    report = {"t": args.t, "noisy": quality(noisy_view, x), "denoised": quality(x0_hat, x)}
    if args.json:
        print(json.dumps(report))
    else:
        for k in ("noisy", "denoised"):
            print(f"{k:9s} " + "  ".join(f"{m} {fmt(v)}" for m, v in report[k].items()))
        print(f"wrote {args.out}")
    return 0


def cmd_metrics(args) -> int:
    ref_im, img_im = open_image(args.ref), open_image(args.img)
    (w1, h1), (w2, h2) = ref_im.size, img_im.size
    if w1 * h2 != w2 * h1:
        raise ValueError(f"{args.ref} is {w1}x{h1} but {args.img} is {w2}x{h2}: images of different aspect "
                         "ratios cannot be compared pixel by pixel; crop them to the same shape first")
    if (w1, h1) != (w2, h2):  # the larger one is resized to the smaller, whichever order they come in
        from PIL import Image
        small = min((w1, h1), (w2, h2))
        print(f"note: comparing at {small[0]}x{small[1]}: the larger image is resized (Lanczos) to the smaller's size",
              file=sys.stderr)
        ref_im, img_im = ref_im.resize(small, Image.LANCZOS), img_im.resize(small, Image.LANCZOS)
    scores = quality(pil_to_tensor(img_im), pil_to_tensor(ref_im))
    print(json.dumps(scores) if args.json else "  ".join(f"{k} {fmt(v)}" for k, v in scores.items()))
    return 0


def cmd_models(args) -> int:
    from .models import list_models
    rows = list_models()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'name':20s} {'kind':18s} {'size':>9s}  {'where':8s}  source")
    for r in rows:
        size = f"{r['size'] / 1e6:.1f} MB" if r.get("size") else "-"
        where = "cached" if r.get("cached") else ("built-in" if r.get("builtin") else "remote")
        print(f"{r['name']:20s} {r['kind']:18s} {size:>9s}  {where:8s}  {r.get('source', '')}")
    return 0


# -- the parser -------------------------------------------------------------------------------------
class Parser(argparse.ArgumentParser):
    """argparse with a one-line error: `diffprior CMD: error: argument --n: must be at least 1, got 0`."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="diffprior", description="Inverse imaging with a diffusion model as the prior.")
    parser.add_argument("--version", action="version", version=f"diffprior {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("restore", help="degrade an image with a task's operator, then restore it",
                       description="Degrade a clean image (or take an already degraded one with --measured) and "
                                   "restore it; writes the result, a side-by-side figure, and the metrics of the "
                                   "naive reconstruction and of the restoration.")
    p.add_argument("--input", required=True, help="the image (any size: centre-cropped and resized to the model's)")
    p.add_argument("--task", choices=[*TASKS, "inpaint"], help="the degradation (inpaint needs --mask)")
    p.add_argument("--method", choices=list(SOLVERS), default="dps")
    p.add_argument("--out", default="restored.png")
    p.add_argument("--steps", type=arguments.positive, default=None,
                   help="solver steps (default: 100 on a CPU; on a GPU the solver's own, all 1000 for most)")
    p.add_argument("--sigma-y", type=arguments.noise_std, default=0.05,
                   help="measurement noise std on [-1, 1] images (0.05)")
    p.add_argument("--mask", default=None, help="an inpainting mask image: white = known, black = missing; the "
                   "photo's size (cropped and resized with it) or the model's")
    p.add_argument("--measured", action="store_true", help="the input is already the degraded measurement: for sr4 "
                   "the low-resolution image (the model's size / 4), for inpaint (--mask) and colorize a photo of "
                   "any size, for the other tasks an image of the model's size")
    p.add_argument("--samples", type=arguments.positive, default=1, metavar="K",
                   help="draw K posterior samples in one batch: write their mean, a per-pixel std map and a "
                        "calibration figure (error against predicted std)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="other solver settings, e.g. scale=0.3")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    add_model_arguments(p)
    p.set_defaults(run=cmd_restore)

    p = sub.add_parser("demo", help="sample a clean image, degrade it with each task, restore it with each method")
    p.add_argument("--out", default="diffprior-demo")
    p.add_argument("--tasks", default="box-inpaint,random-inpaint,gaussian-blur,sr4")
    p.add_argument("--methods", default="sdedit,scoreald,dps,ddnm")
    p.add_argument("--steps", type=arguments.positive, default=None,
                   help="solver steps (default: 1000 on a GPU, 100 on a CPU)")
    p.add_argument("--sigma-y", type=arguments.noise_std, default=0.05)
    add_model_arguments(p)
    p.set_defaults(run=cmd_demo)

    p = sub.add_parser("sample", help="unconditional samples from the prior, as one grid image")
    p.add_argument("--n", type=arguments.positive, default=16)
    p.add_argument("--nrow", type=arguments.positive, default=8)
    p.add_argument("--steps", type=arguments.positive, default=None, help="default: all T steps")
    p.add_argument("--sampler", choices=["ddpm", "ddim"], default="ddpm")
    p.add_argument("--eta", type=arguments.number(0.0, 1.0), default=0.0, help="DDIM noise, 0 (deterministic) to 1")
    p.add_argument("--out", default="samples.png")
    add_model_arguments(p)
    p.set_defaults(run=cmd_sample)

    p = sub.add_parser("denoise", help="single-step denoising: noise an image to timestep t, then the Tweedie estimate")
    p.add_argument("--input", required=True)
    p.add_argument("--t", type=arguments.count, default=300, help="the timestep, 0 to T - 1 (default 300)")
    p.add_argument("--out", default="denoised.png")
    p.add_argument("--json", action="store_true")
    add_model_arguments(p)
    p.set_defaults(run=cmd_denoise)

    p = sub.add_parser("metrics", help="PSNR, SSIM and LPIPS between two image files")
    p.add_argument("ref")
    p.add_argument("img")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_metrics)

    p = sub.add_parser("bench", help="benchmarks: `bench posterior` scores every solver against an exact "
                       "posterior; `bench speed` times solver steps")
    bench = p.add_subparsers(dest="bench", required=True)
    from . import bench_posterior
    q = bench.add_parser("posterior", help="solvers against the exact posterior of a Gaussian-mixture prior",
                         description=bench_posterior.__doc__.split("\n\n")[0])
    bench_posterior.add_arguments(q)
    q.set_defaults(run=bench_posterior.main)
    from . import bench_speed
    q = bench.add_parser("speed", help="time a solver's steps and the network's forward pass, per batch size",
                         description=bench_speed.__doc__.split("\n\n")[0])
    bench_speed.add_arguments(q)
    q.set_defaults(run=bench_speed.main)

    from . import evaluate
    p = sub.add_parser("eval", help="evaluate solvers over a folder of images: resumable rows.csv and a summary",
                       description=evaluate.__doc__.split("\n\n")[0])
    evaluate.add_arguments(p)
    p.set_defaults(run=evaluate.run)

    from . import reproduce
    doc = reproduce.__doc__.split("\n\n")
    p = sub.add_parser("reproduce", help="the report's experiments end to end: tables, figures and REPORT.md",
                       description=doc[0] + "\n\n" + doc[1], epilog="\n\n".join(doc[2:]),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    reproduce.add_arguments(p)
    p.set_defaults(run=reproduce.run)

    from . import data, train
    p = sub.add_parser("train", help="train the compact UNet on a folder of images (denoising score matching)")
    train.add_train_arguments(p)
    p.set_defaults(run=train.run_train)

    p = sub.add_parser("pack", help="preprocess an image folder into one compact file for training")
    data.add_pack_arguments(p)
    p.set_defaults(run=data.run_pack)

    p = sub.add_parser("models", help="list the built-in and downloadable priors")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_models)
    _add_debug(parser)
    return parser


def _add_debug(parser: argparse.ArgumentParser) -> None:
    """`--debug` after any subcommand too (it is also taken before it)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                                 help="show the full traceback of an error")
                _add_debug(sub)


# The errors a user can cause (bad files, values, devices, checkpoints, full or read-only disks, missing
# extras): one line and exit code 2. Anything else is a bug: one line, exit code 1.
USER_ERRORS = (OSError, ValueError, TypeError, RuntimeError, ImportError)


def describe(e: BaseException) -> str:
    """An exception as the one line a user reads."""
    if isinstance(e, OSError) and e.strerror:  # from the system: "No space left on device: out.png"
        return f"{e.strerror}: {e.filename}" if e.filename else e.strerror
    return str(e) or type(e).__name__


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = args.run(args)
        return code if isinstance(code, int) else 0
    except KeyboardInterrupt:
        print(f"diffprior {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if args.debug:
            raise
        if isinstance(e, USER_ERRORS):
            print(f"diffprior {args.command}: error: {describe(e)}", file=sys.stderr)
            return 2
        print(f"diffprior {args.command}: internal error: {type(e).__name__}: {e} (rerun with --debug for the "
              "traceback, and please report it)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
