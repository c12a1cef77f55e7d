"""The `diffprior` command line: restore, demo, sample, denoise, metrics, models (and train)."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

from . import __version__
from .io import image_grid, load_image, load_mask, save_image
from .models import DEFAULT_MODEL, load_prior
from .operators import TASKS, Inpaint, make_operator, measure
from .solvers import SOLVERS, denoise, sample, settings_for, solve


# -- shared helpers ---------------------------------------------------------------------------------
def pick_device(name: str | None) -> torch.device:
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def generator(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def parse_settings(pairs: list[str]) -> dict:
    """`--set key=value ...` -> {key: value}, values read as JSON where they parse (numbers, true, ...)."""
    settings = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set expects key=value, got {pair!r}")
        try:
            settings[key.replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            settings[key.replace("-", "_")] = value
    return settings


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
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


# -- restore ----------------------------------------------------------------------------------------
def cmd_restore(args) -> int:
    device = pick_device(args.device)
    prior = load_prior(args.model, device, config=args.config)
    size = prior.shape[-1]
    gen = generator(device, args.seed)
    if args.mask is not None and args.task not in (None, "inpaint"):
        raise SystemExit("--mask defines an inpainting task: leave out --task or use --task inpaint")
    task = "inpaint" if args.mask is not None else args.task
    if task is None:
        raise SystemExit("say which degradation with --task (one of: " + ", ".join(TASKS) + ") or give --mask")

    x = None
    if args.measured:
        # The input is already degraded: it is y (an SR input is the low-resolution image).
        low = task.startswith("sr")
        op = _operator(task, args, size)
        y = load_image(args.input, size // op.factor if low else size).to(device)
        if isinstance(op, Inpaint):
            y = op.A(y)
    else:
        x = load_image(args.input, size).to(device)
        op = _operator(task, args, size)
        y = measure(op.to(device), x, args.sigma_y, gen)
    op = op.to(device)
    naive = naive_or_none(op, y)
    settings = settings_for(args.method, task, steps=args.steps, **parse_settings(args.set))
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

    out = Path(args.out)
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
        written.append(save_image(std_image(std), out.with_name(out.stem + "_std.png")))
        report["uncertainty"] = {"samples": args.samples, "mean_std": round(float(std.mean()), 4)}
        if x is not None:
            cal = calibration(restored[0], std, x[0])
            report["uncertainty"]["coverage90"] = round(cal["coverage90"], 4)
            written.append(calibration_figure(cal, out.with_name(out.stem + "_calibration.png"),
                                              title=f"{task} / {args.method}, {args.samples} samples"))
    figure = out.with_name(out.stem + "_figure.png")
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


def _operator(task: str, args, size: int):
    if task == "inpaint":
        if args.mask is None:
            raise SystemExit("--task inpaint needs --mask MASK.png (white = known pixels, black = holes)")
        return Inpaint(load_mask(args.mask, (size, size)))
    return make_operator(task, (3, size, size), seed=args.seed)


# -- demo -------------------------------------------------------------------------------------------
def cmd_demo(args) -> int:
    from .figures import displayable, image_table
    device = pick_device(args.device)
    prior = load_prior(args.model, device, config=args.config)
    steps = cpu_steps_note(device, args.steps, 100)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # Every random draw has its own generator, seeded by what it is for (the image; each task's measurement;
    # each method on each task), so a result does not depend on which other tasks and methods ran before it.
    from .evaluate import derive_seed
    size = prior.shape[-1]
    print(f"drawing a clean image from the prior {args.model} ...", file=sys.stderr)
    if hasattr(prior, "sample") and not prior.bounded:
        x = prior.sample(1, torch.Generator().manual_seed(args.seed)).float().to(device)
    else:
        x = sample(prior, 1, steps=steps, generator=generator(device, args.seed), progress=True)
    rows, captions, table = [], [], []
    methods = args.methods.split(",")
    for task in args.tasks.split(","):
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
    (out / "demo.md").write_text("\n".join(lines) + "\n")
    (out / "demo.json").write_text(json.dumps({"settings": settings, "rows": table}, indent=2) + "\n")
    print("\n".join(lines))
    print(f"wrote {figure}, {out / 'demo.md'} and {out / 'demo.json'}")
    return 0


# -- sample, denoise, metrics, models ---------------------------------------------------------------
def cmd_sample(args) -> int:
    device = pick_device(args.device)
    prior = load_prior(args.model, device, config=args.config)
    x = sample(prior, args.n, steps=args.steps, sampler=args.sampler, eta=args.eta,
               generator=generator(device, args.seed), progress=True)
    save_image(image_grid(x, nrow=args.nrow), args.out)
    print(f"wrote {args.n} samples to {args.out}")
    return 0


def cmd_denoise(args) -> int:
    device = pick_device(args.device)
    prior = load_prior(args.model, device, config=args.config)
    x = load_image(args.input, prior.shape[-1]).to(device)
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
    from .io import center_square, open_image, pil_to_tensor
    ref_im, img_im = open_image(args.ref), open_image(args.img)
    if ref_im.size != img_im.size:
        print(f"note: resizing {args.img} from {img_im.size[0]}x{img_im.size[1]} to {ref_im.size[0]}x{ref_im.size[1]}",
              file=sys.stderr)
        from PIL import Image
        img_im = img_im.resize(ref_im.size, Image.LANCZOS)
    scores = quality(pil_to_tensor(center_square(img_im, None)), pil_to_tensor(ref_im))
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
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffprior", description="Inverse imaging with a diffusion model as the prior.")
    parser.add_argument("--version", action="version", version=f"diffprior {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("restore", help="degrade an image with a task's operator, then restore it",
                       description="Degrade a clean image (or take an already degraded one with --measured) and "
                                   "restore it; writes the result, a side-by-side figure, and the metrics of the "
                                   "naive reconstruction and of the restoration.")
    p.add_argument("--input", required=True, help="the image (any size: centre-cropped and resized to the model's)")
    p.add_argument("--task", choices=[*TASKS, "inpaint"], help="the degradation (inpaint needs --mask)")
    p.add_argument("--method", choices=list(SOLVERS), default="dps")
    p.add_argument("--out", default="restored.png")
    p.add_argument("--steps", type=int, default=None, help="solver steps (default: the solver's, all 1000)")
    p.add_argument("--sigma-y", type=float, default=0.05, help="measurement noise std on [-1, 1] images (0.05)")
    p.add_argument("--mask", default=None, help="an inpainting mask image: white = known, black = missing")
    p.add_argument("--measured", action="store_true", help="the input is already the degraded measurement")
    p.add_argument("--samples", type=int, default=1, metavar="K",
                   help="draw K posterior samples in one batch: write their mean, a per-pixel std map and a "
                        "calibration figure (error against predicted std)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="other solver settings, e.g. scale=0.3")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    add_model_arguments(p)
    p.set_defaults(run=cmd_restore)

    p = sub.add_parser("demo", help="sample a clean image, degrade it with each task, restore it with each method")
    p.add_argument("--out", default="diffprior-demo")
    p.add_argument("--tasks", default="box-inpaint,random-inpaint,gaussian-blur,sr4")
    p.add_argument("--methods", default="sdedit,scoreald,dps")
    p.add_argument("--steps", type=int, default=None, help="solver steps (default: 1000 on a GPU, 100 on a CPU)")
    p.add_argument("--sigma-y", type=float, default=0.05)
    add_model_arguments(p)
    p.set_defaults(run=cmd_demo)

    p = sub.add_parser("sample", help="unconditional samples from the prior, as one grid image")
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--nrow", type=int, default=8)
    p.add_argument("--steps", type=int, default=None, help="default: all T steps")
    p.add_argument("--sampler", choices=["ddpm", "ddim"], default="ddpm")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM noise (0 = deterministic)")
    p.add_argument("--out", default="samples.png")
    add_model_arguments(p)
    p.set_defaults(run=cmd_sample)

    p = sub.add_parser("denoise", help="single-step denoising: noise an image to timestep t, then the Tweedie estimate")
    p.add_argument("--input", required=True)
    p.add_argument("--t", type=int, default=300)
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = args.run(args)
        return code if isinstance(code, int) else 0
    except (FileNotFoundError, ValueError, TypeError, RuntimeError, ImportError) as e:
        print(f"diffprior {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"diffprior {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
