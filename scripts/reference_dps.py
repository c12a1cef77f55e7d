#!/usr/bin/env python3
"""Time the official DPS sampling loop (Chung et al. 2023, github.com/DPS2022/diffusion-posterior-sampling)
on this machine, with random weights, for the speed comparison in docs/BENCHMARKS.md.

The official code is not part of diffprior: clone it first (scripts/gpu_prepare.sh does), then
  python scripts/reference_dps.py --repo reference/dps --steps 20 --batch 1 --out ref.json
It builds the official UNet from a guided-diffusion model_config.yaml (default: the repository's FFHQ
config, the 93.6M network of ffhq_10m.pt; its weights are not needed for a timing), the official sampler
(DDPM, linear schedule, learned range, clip_denoised) respaced to --steps, and the official conditioning
method "ps" (posterior sampling, scale 0.5) on box inpainting; then it times one full `p_sample_loop`
after a warm-up of 2 steps, exactly as `sample_condition.py` calls it. Only two things are supplied from
here: the inpainting operator (x * mask, the official `inpainting` operator's forward) and a stand-in for
the `motionblur` package, a separate repository that the official utilities import at module level and
that this timing never calls.

Writes JSON: ms_per_step, ms_per_step_per_image, seconds_per_1000_step_image, batch, steps, device.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import types
from pathlib import Path

import torch
import yaml


def load_official(repo: Path):
    """The official modules, importable from `repo` (with the unused motionblur import satisfied)."""
    if not (repo / "guided_diffusion" / "condition_methods.py").is_file():
        raise SystemExit(f"{repo} is not a clone of DPS2022/diffusion-posterior-sampling (see the docstring)")
    sys.path.insert(0, str(repo))
    try:
        import motionblur.motionblur  # noqa: F401  (present when the user cloned it as the README says)
    except ImportError:
        stand_in = types.ModuleType("motionblur.motionblur")
        stand_in.Kernel = None  # only the motion-blur operator uses it
        sys.modules["motionblur"] = types.ModuleType("motionblur")
        sys.modules["motionblur.motionblur"] = stand_in
    from guided_diffusion.condition_methods import get_conditioning_method
    from guided_diffusion.gaussian_diffusion import create_sampler
    from guided_diffusion.unet import create_model
    return create_model, create_sampler, get_conditioning_method


class BoxInpaint:
    """The official inpainting operator's forward (data * mask) with one centred box missing."""

    def __init__(self, size: int, device):
        self.mask = torch.ones(1, 1, size, size, device=device)
        self.mask[..., size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 0

    def forward(self, data, **kwargs):
        return data * self.mask


class GaussianNoiser:
    __name__ = "gaussian"  # what the official grad_and_value checks


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repo", type=Path, required=True, help="a clone of the official DPS repository")
    p.add_argument("--model-config", type=Path, help="model_config.yaml (default: REPO/configs/model_config.yaml)")
    p.add_argument("--steps", type=int, default=20, help="timed steps: the chain respaced to this length")
    p.add_argument("--batch", type=int, default=1, help="images per loop (the official script uses 1)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path, required=True, help="the JSON file to write")
    args = p.parse_args(argv)
    create_model, create_sampler, get_conditioning_method = load_official(args.repo.resolve())
    config = yaml.safe_load((args.model_config or args.repo / "configs" / "model_config.yaml").read_text())
    config["model_path"] = ""  # random weights: the official create_model says so and initialises randomly
    device = torch.device(args.device)
    model = create_model(**config).to(device).eval()
    size = int(config["image_size"])
    operator = BoxInpaint(size, device)
    cond = get_conditioning_method("ps", operator, GaussianNoiser(), scale=0.5)
    x = torch.rand(args.batch, 3, size, size, device=device) * 2 - 1
    y = operator.forward(x) + 0.05 * torch.randn_like(x)

    def loop(steps: int) -> float:
        sampler = create_sampler(sampler="ddpm", steps=1000, noise_schedule="linear", model_mean_type="epsilon",
                                 model_var_type="learned_range", dynamic_threshold=False, clip_denoised=True,
                                 rescale_timesteps=False, timestep_respacing=str(steps))
        x_start = torch.randn(x.shape, device=device).requires_grad_()
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        sampler.p_sample_loop(model=model, x_start=x_start, measurement=y, measurement_cond_fn=cond.conditioning,
                              record=False, save_root=None)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    loop(2)  # warm-up: kernels, allocator
    seconds = loop(args.steps)
    ms_per_step = 1000 * seconds / args.steps
    result = {"implementation": "official DPS (DPS2022/diffusion-posterior-sampling), random weights",
              "task": "box-inpaint", "batch": args.batch, "steps": args.steps, "device": str(device),
              "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
              "parameters": sum(p.numel() for p in model.parameters()),
              "ms_per_step": round(ms_per_step, 3), "ms_per_step_per_image": round(ms_per_step / args.batch, 3),
              "seconds_per_1000_step_image": round(ms_per_step / args.batch, 3)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
