"""Training a SmallUNet face prior by denoising score matching.

The loss is Ho et al. 2020's "simple" objective: for x_0 from the data (randomly flipped left-right),
t uniform in 0..T-1 and z ~ N(0, I), the mean squared error between z and eps(sqrt(abar_t) x_0 +
sqrt(1 - abar_t) z, t); or, with prediction="v", the network predicts v = sqrt(abar_t) z - sqrt(1 - abar_t) x_0
and the loss is the MSE of v (Salimans & Ho 2022). AdamW with a linear warm-up (and optionally a cosine
decay), gradient-norm clipping, and an exponential moving average (EMA) of the weights, which is the model
that gets exported and sampled.

Everything that a run needs to continue lives in `out/state.pt` (network, EMA, optimiser, step, and
every random state: the global torch generators, the noise generator and the data sampler's position),
written atomically every `checkpoint_every` steps, when the time budget runs out, on Ctrl-C or SIGTERM
and at the end. `resume=True` continues from it: the data order, noise and dropout continue exactly where
they stopped, so on the CPU the weights are bit-identical to an uninterrupted run's (CUDA kernels such as
the convolutions' backward passes are not deterministic unless torch.use_deterministic_algorithms is
set, so there the runs agree only up to rounding). At each checkpoint the EMA network is exported as
`out/model.safetensors` + `out/model.json`, loadable with `diffprior.load_prior`. `out/log.csv` records the loss curve; with
`val`, it also records the loss on held-out images and on as many training images, at fixed timesteps
and noise, so that the two are comparable (a gap between them is a sign of memorisation).
"""

from __future__ import annotations

import copy
import csv
import math
import shutil
import signal
import threading
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from . import io
from .data import FaceSet, load_faces
from .checkpoints import CheckpointError, load_tensors, save_checkpoint
from .devices import pick_device
from .io import atomic_write, from_uint8
from .metrics import psnr
from .networks import build_network
from .networks.small import SmallUNet, network_config, widen as widen_network
from .prior import PREDICTIONS, NetworkPrior
from .schedule import Schedule, eps_from_v, v_loss_weight
from .solvers.sampling import sample

STATE, MODEL, LOG = "state.pt", "model.safetensors", "log.csv"
STATE_KEYS = ("identity", "net", "ema", "opt", "step", "images", "seconds", "loss", "rng")
PSNR_STEPS = (100, 300, 500)  # timesteps of the Tweedie PSNR tracked on the validation images
LOG_FIELDS = ["step", "images", "seconds", "lr", "loss", "val_loss", "train_eval_loss",
              *(f"val_psnr_{t}" for t in PSNR_STEPS)]
EVAL_SEED = 1234  # the fixed timesteps and noise of the evaluation losses
SAMPLE_SEED = 0   # the fixed initial noise of the sample grids
DIVERGED = 1000   # a loss this many times the first one a call logs (or not finite) stops the run as diverged


class TrainingDiverged(RuntimeError):
    """The training loss became non-finite or exploded: the learning rate is too large for the run."""


class EpochSampler:
    """Batches of (index, flip) that walk through a fresh random permutation of the data every epoch.

    Epoch e's permutation and flips come from a generator seeded with (seed, e), so the whole state is
    (epoch, position) and a resumed run draws exactly the batches an uninterrupted one would."""

    def __init__(self, n: int, batch: int, seed: int, device: torch.device):
        self.n, self.batch, self.seed, self.device = n, batch, seed, device
        self.epoch, self.pos = 0, 0
        self._arrays: tuple[int, Tensor, Tensor] | None = None

    def _epoch_arrays(self) -> tuple[Tensor, Tensor]:
        if self._arrays is None or self._arrays[0] != self.epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            perm = torch.randperm(self.n, generator=g)
            flips = torch.randint(0, 2, (self.n,), generator=g, dtype=torch.bool)
            self._arrays = (self.epoch, perm.to(self.device), flips.to(self.device))
        return self._arrays[1], self._arrays[2]

    def next(self) -> tuple[Tensor, Tensor]:
        idx, flip, need = [], [], self.batch
        while need:
            perm, flips = self._epoch_arrays()
            k = min(need, self.n - self.pos)
            idx.append(perm[self.pos:self.pos + k])
            flip.append(flips[self.pos:self.pos + k])
            self.pos, need = self.pos + k, need - k
            if self.pos == self.n:
                self.epoch, self.pos = self.epoch + 1, 0
        return torch.cat(idx), torch.cat(flip)

    def state_dict(self) -> dict:
        return {"seed": self.seed, "epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.seed, self.epoch, self.pos = state["seed"], state["epoch"], state["pos"]


class StopRequest:
    """While active, the first Ctrl-C or SIGTERM (`kill`, a job scheduler's stop) only asks the loop to stop
    after the current step (so that the checkpoint is consistent; work inside `droppable()` ends at once); a
    second one interrupts at once, or, inside `protected()` (a checkpoint being written), as soon as that
    section ends."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested = False
        self._previous = {}
        self._protected = self._pending = self._droppable = False

    @contextmanager
    def droppable(self) -> Iterator[None]:
        """Work the run can do without (an evaluation, a sample grid: minutes on a CPU): a stop request ends it
        at once, and the loop goes on to its checkpoint."""
        self._droppable = True
        try:
            yield
        except KeyboardInterrupt:
            if not self.requested:
                raise
        finally:
            self._droppable = False

    @contextmanager
    def protected(self) -> Iterator[None]:
        self._protected = True
        try:
            yield
        finally:
            self._protected = False
        if self._pending:
            raise KeyboardInterrupt

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def _handle(self, signum, frame):
        if self.requested and self._protected:
            self._pending = True
        elif self.requested:
            raise KeyboardInterrupt
        self.requested = True
        if self._droppable:
            raise KeyboardInterrupt

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def resolve_network(network: str | dict, size: int) -> dict:
    """A config name or a dict of SmallUNet settings -> full settings, attention placed for `size`."""
    cfg = network_config(network) if isinstance(network, str) else dict(network)
    return SmallUNet.full_config(**{**cfg, "image_size": size})


class EpsLoss:
    """The objective: w(t) || eps(sqrt(abar_t) x0 + sqrt(1 - abar_t) z, t) - z ||^2.

    w = 1 is Ho et al. 2020's L_simple; `min_snr` = gamma gives Hang et al. 2023's min-SNR-gamma
    weighting for epsilon prediction, w(t) = min(SNR_t, gamma) / SNR_t with SNR_t = abar_t / (1 - abar_t),
    which stops the nearly clean timesteps from dominating the gradient (for v prediction it is the same
    weighting). With prediction="v" the network predicts v (Salimans & Ho 2022) and eps is computed from it
    (`eps_from_v`); without min_snr the loss is then the plain MSE of v, w(t) = 1 / abar_t, which keeps the
    nearly pure-noise timesteps, where the mean colour is decided, from being ignored; with `v_shift` s the v
    read at SNR / s (`eps_from_v`), w(t) = `v_loss_weight`, which is about 1 where SNR >> s. The schedule's
    tables are copied to the device once, so that no step synchronises with it. `bf16`: run the network
    under bfloat16 autocast (on CUDA, and on CPUs with native bf16 instructions). `t_density`: the training
    timesteps' relative density (`timestep_density`); None: uniform in 0..T-1."""

    def __init__(self, schedule: Schedule, device: torch.device, min_snr: float | None = None, bf16: bool = False,
                 prediction: str = "eps", v_shift: float = 1.0, t_density: str | None = None):
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {prediction!r}; expected 'eps' or 'v'")
        self.T, self.prediction, self.v_shift = schedule.T, prediction, v_shift
        self.abar = schedule.abar.float().to(device)
        self.sqrt_a = schedule.abar.sqrt().float().to(device)
        self.sqrt_1ma = (1 - schedule.abar).sqrt().float().to(device)
        snr = schedule.abar / (1 - schedule.abar)
        if min_snr:
            weight = snr.clamp(max=min_snr) / snr
        else:
            weight = v_loss_weight(schedule.abar, v_shift) if prediction == "v" else torch.ones_like(snr)
        self.weight = weight.float().to(device)
        self.t_probs = None if t_density is None else timestep_density(t_density, self.T).to(device)
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()

    def sample_t(self, n: int, generator: torch.Generator) -> Tensor:
        """n training timesteps drawn from the density (uniform without one)."""
        if self.t_probs is None:
            return torch.randint(0, self.T, (n,), device=self.abar.device, generator=generator)
        return torch.multinomial(self.t_probs, n, replacement=True, generator=generator)

    def noisy_prediction(self, net: nn.Module, x0: Tensor, t: Tensor, noise: Tensor) -> tuple[Tensor, Tensor]:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise, and the network's eps(x_t, t) in float32."""
        x_t = self.sqrt_a[t].view(-1, 1, 1, 1) * x0 + self.sqrt_1ma[t].view(-1, 1, 1, 1) * noise
        with self.autocast:
            out = net(x_t, t).float()
        if self.prediction == "v":
            out = eps_from_v(x_t, out, self.abar[t].view(-1, 1, 1, 1), self.v_shift)
        return x_t, out

    def __call__(self, net: nn.Module, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        per_image = (self.noisy_prediction(net, x0, t, noise)[1] - noise).square().mean(dim=(1, 2, 3))
        return (self.weight[t] * per_image).mean()

    @torch.no_grad()
    def evaluate(self, net: nn.Module, images: Tensor, batch: int) -> float:
        """Mean unweighted loss on uint8 `images` at fixed timesteps (spread evenly over 0..T-1) and fixed
        noise, the same on every call and device, so that values are comparable across steps, image sets
        and weightings."""
        n, size = len(images), images.shape[-1]
        g = torch.Generator().manual_seed(EVAL_SEED)
        t_all, noise_all = torch.arange(n) * self.T // n, torch.randn(n, 3, size, size, generator=g)
        total = 0.0
        for i in range(0, n, batch):
            t, noise = t_all[i:i + batch].to(images.device), noise_all[i:i + batch].to(images.device)
            eps = self.noisy_prediction(net, from_uint8(images[i:i + batch]), t, noise)[1]
            total += (eps - noise).square().sum().item()
        return total / noise_all.numel()

    @torch.no_grad()
    def tweedie_psnr(self, net: nn.Module, images: Tensor, batch: int, t: int) -> float:
        """Mean PSNR (dB, images in [-1, 1]) of the one-step estimate x0_hat(x_t) at timestep `t`, with
        fixed noise: the single-step denoising of the report's Table 1, tracked during training."""
        g = torch.Generator().manual_seed(EVAL_SEED + t)
        noise_all = torch.randn(len(images), 3, images.shape[-2], images.shape[-1], generator=g)
        psnrs = []
        for i in range(0, len(images), batch):
            x0 = from_uint8(images[i:i + batch])
            steps = torch.full((len(x0),), t, device=images.device)
            x_t, eps = self.noisy_prediction(net, x0, steps, noise_all[i:i + batch].to(images.device))
            x0_hat = ((x_t - self.sqrt_1ma[t] * eps) / self.sqrt_a[t]).clamp(-1, 1)
            psnrs.append(psnr(x0_hat, x0))
        return torch.cat(psnrs).mean().item()


def timestep_density(spec: str, T: int) -> Tensor:
    """"t0:w0,t1:w1,..." -> the probabilities of the timesteps 0..T-1: relative density w_i from t_i up to the
    next breakpoint (t0 must be 0), e.g. "0:1,600:0.25" draws t >= 600 a quarter as often as the others."""
    try:
        points = [(int(t), float(w)) for t, w in (item.split(":") for item in spec.split(","))]
    except ValueError:
        raise ValueError(f"timestep density {spec!r}: expected 't:weight,t:weight,...', e.g. '0:1,600:0.25'") from None
    starts = [t for t, _ in points]
    if starts[0] != 0 or starts != sorted(set(starts)) or starts[-1] >= T:
        raise ValueError(f"timestep density {spec!r}: breakpoints must rise from 0 and stay below {T}")
    if any(not math.isfinite(w) or w < 0 for _, w in points) or not any(w > 0 for _, w in points):
        raise ValueError(f"timestep density {spec!r}: weights must be finite, >= 0 and not all 0")
    density = torch.zeros(T, dtype=torch.float64)
    for (t, w), end in zip(points, starts[1:] + [T]):
        density[t:end] = w
    return (density / density.sum()).float()


def read_state(path: Path) -> dict:
    """A training state written by `train` (tensors and plain containers only: nothing else is unpickled)."""
    if path.is_dir():
        raise CheckpointError(f"cannot resume: {path} is a folder, not a training state written by `diffprior train`")
    try:
        state = load_tensors(path)
    except CheckpointError as e:
        raise CheckpointError(f"cannot resume: {e}; a copy cut short, or a file `diffprior train` did not "
                              "write?") from e
    if not isinstance(state, dict) or not set(STATE_KEYS) <= set(state):
        raise CheckpointError(f"cannot resume from {path}: it is not a training state written by `diffprior train` "
                              f"(it has no {', '.join(STATE_KEYS)})")
    return state


def learning_rate(step: int, lr: float, warmup: int, steps: int, lr_end: float | None = None,
                  decay_from: int = 0) -> float:
    """The rate of optimiser step `step` (0-based): `lr`, or with `lr_end` a half-cosine from `lr` at step
    `decay_from` down to `lr_end` at step `steps`; times a linear warm-up from 0 over the first `warmup` steps
    (whether or not the decay has begun)."""
    rate = lr
    if lr_end is not None and step >= decay_from:
        progress = min(1.0, (step - decay_from) / max(steps - decay_from, 1))
        rate = lr_end + (lr - lr_end) * 0.5 * (1 + math.cos(math.pi * progress))
    return rate * min(1.0, (step + 1) / max(warmup, 1))


def train(data: str | Path | FaceSet, out: str | Path, *,
          size: int = 64,                       # square image size
          steps: int = 10_000,                  # total optimiser steps (a resumed run continues up to it)
          batch: int = 256,                     # images per step
          lr: float = 2e-4,                     # AdamW learning rate after the warm-up
          warmup: int = 500,                    # steps of linear learning-rate warm-up
          lr_end: float | None = None,          # cosine-decay the rate to this value at `steps`; None: constant
          decay_from: int = 0,                  # the step where the cosine decay starts
          ema: float = 0.9995,                  # EMA decay (ramped up as min(ema, (1+s)/(10+s)))
          weight_decay: float = 0.0,            # AdamW weight decay
          grad_clip: float | None = 1.0,        # clip the gradient's global norm; None: no clipping
          network: str | dict = "default",      # SmallUNet config name (tiny, default, large) or settings
          min_snr: float | None = None,         # min-SNR-gamma loss weighting (Hang et al. 2023); None: L_simple
          prediction: str | None = None,        # the network predicts "eps" or "v" (Salimans & Ho 2022);
                                                #   None: as the resumed run, else as `init`, else "eps"
          v_shift: float | None = None,         # v read at SNR / v_shift (`eps_from_v`); None: as prediction
          t_density: str | None = None,         # training timesteps' density (`timestep_density`); None: uniform
          bf16: bool | None = None,             # bfloat16 autocast; default: on CUDA only
          first: str | None = None,             # data: first file-name stem to use, e.g. "000001"
          last: str | None = None,              # data: last file-name stem to use, e.g. "009500"
          count: int | None = None,             # data: at most this many images
          val: str | Path | FaceSet | None = None,  # held-out images (folder or pack) for a validation loss
          val_first: str | None = None,         # validation: selection, as for the data
          val_last: str | None = None,
          val_count: int | None = 500,
          eval_every: int = 1000,               # steps between validation losses (and at the end)
          psnr_count: int = 200,                # validation images of the tracked Tweedie PSNR
          checkpoint_every: int = 1000,         # steps between checkpoints and model exports (and at the end)
          sample_every: int = 0,                # steps between sample grids in out/samples (and at the end); 0: none
          sample_n: int = 16,                   # images in a sample grid
          sample_steps: int = 100,              # sampler steps for the grids
          sampler: str = "ddpm",                # "ddpm" or "ddim"
          log_every: int = 10,                  # steps averaged into one row of out/log.csv
          max_minutes: float | None = None,     # time budget of this call: stop, checkpoint, then the final validation
          resume: bool = False,                 # continue from out/state.pt when it exists
          init: str | Path | None = None,       # start from this model's weights (a name such as "faces64"
                                                #   or a checkpoint path), with a fresh optimiser
          widen: int = 1,                       # with init: its network this many times as wide, started as
                                                #   the same function (`networks.small.widen`)
          device: str | torch.device | None = None,  # default: cuda when available, else cpu
          compile: bool = False,                # torch.compile the training forward pass
          channels_last: bool = False,          # channels-last memory format (CUDA only; measured slower)
          seed: int = 0,                        # seeds the initial weights, data order and noise
          progress: bool = True) -> Path:       # a tqdm bar with the loss
    """Train (or continue training) a SmallUNet epsilon-prior; returns the path of the exported model."""
    started = time.monotonic()
    out = Path(out)
    device = pick_device(device)
    cuda = device.type == "cuda"
    channels_last = channels_last and cuda
    state_path = out / STATE
    io.output_folder(out, "a training run")
    if state_path.exists() and not resume:
        raise FileExistsError(f"{state_path} exists: continue that run with --resume (resume=True), or use a new "
                              "folder")
    if sampler not in ("ddpm", "ddim"):
        raise ValueError(f"unknown sampler {sampler!r}; expected 'ddpm' or 'ddim'")
    if not 0 <= ema < 1:
        raise ValueError(f"ema={ema:g} (--ema): the EMA's decay, in [0, 1) (at 1 it never leaves the first weights)")
    if lr_end is not None and not lr_end <= lr:
        raise ValueError(f"lr_end={lr_end:g} (--lr-end) is above lr={lr:g} (--lr): the cosine decays the rate to it")
    if lr_end is not None and decay_from >= steps:
        raise ValueError(f"decay_from={decay_from} (--decay-from) is not below steps={steps} (--steps): the decay to "
                         "lr_end would never begin")
    if val is None and (val_first or val_last):
        raise ValueError("val_first / val_last (--val-first, --val-last) choose validation images: give val (--val)")
    T = Schedule.linear().T
    if sample_every and not 1 <= sample_steps <= T:  # checked now, not at the first grid
        raise ValueError(f"sample_steps={sample_steps} (--sample-steps): the grids' sampler steps, 1 ... {T}")
    if t_density is not None:
        timestep_density(t_density, T)  # its errors now, before the data is read
    state = read_state(state_path) if resume and state_path.exists() else None
    if state is None and ((out / MODEL).exists() or (out / MODEL).with_suffix(".json").exists()):
        raise FileExistsError(f"{out / MODEL} exists without {STATE} (a finished run's model?): a new run would "
                              "replace it; use a new folder, or move the model away")
    if resume and state is None:
        print(f"note: nothing to resume in {out} (no {STATE}): starting a new run", file=sys.stderr)
    if cuda:
        torch.backends.cudnn.benchmark = True

    net_config = resolve_network(network, size)
    if widen != 1 and init is None:
        raise ValueError("widen needs init: the model whose network is widened")
    warm_start = None if init is None else _warm_start(init, net_config, widen, seed)
    if warm_start is not None:
        net_config = warm_start.pop("network")

    if prediction is None:  # by default a run keeps its own parameterisation, or its initial model's
        prediction = (state["identity"].get("prediction", "eps") if state is not None
                      else warm_start["prediction"] if warm_start is not None else "eps")
    if v_shift is None:
        v_shift = (state["identity"].get("v_shift", 1.0) if state is not None
                   else warm_start["v_shift"] if warm_start is not None and prediction == "v" else 1.0)
    if v_shift != 1.0 and prediction != "v":
        raise ValueError("v_shift applies to prediction='v' only")

    # Data: the whole uint8 set lives on the device; batches are gathered, flipped and scaled there.
    created = not out.exists()
    try:
        faces = load_faces(data, size, first=first, last=last, count=count, cache=out / f"data-{size}.zip")
        val_faces = None if val is None else load_faces(val, size, first=val_first, last=val_last,
                                                         count=val_count, cache=out / f"val-{size}.zip")
    except BaseException:  # a folder this call made holds only the data caches: nothing of a run
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    images = faces.images.to(device)
    val_images = None if val_faces is None else val_faces.images.to(device)
    shared = set() if val_faces is None or val_faces.source != faces.source else set(val_faces.names) & set(faces.names)
    if shared:
        warnings.warn(f"{len(shared)} of the {len(val_faces)} validation images are training images too (same folder "
                      "and names): their loss shows no memorisation; hold images out with --last / --val-first")
    if warmup > steps:
        warnings.warn(f"warmup={warmup} (--warmup) is beyond steps={steps} (--steps): the learning rate rises only to "
                      f"{learning_rate(steps - 1, lr, warmup, steps, lr_end, decay_from):.3g}, not to lr={lr:g}")
    if batch > len(faces):
        warnings.warn(f"batch={batch} (--batch) is larger than the {len(faces)} training images: each batch holds "
                      "some images more than once")
    out.mkdir(parents=True, exist_ok=True)

    # Model, EMA copy, optimiser and every source of randomness.
    schedule = Schedule.linear()
    bf16 = cuda if bf16 is None else bf16
    objective = EpsLoss(schedule, device, min_snr=min_snr, bf16=bf16, prediction=prediction, v_shift=v_shift,
                        t_density=t_density)
    torch.manual_seed(seed)
    net = build_network("small-unet", **net_config).to(device)
    ema_net = copy.deepcopy(net).eval().requires_grad_(False)
    if channels_last:
        net, ema_net = net.to(memory_format=torch.channels_last), ema_net.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay, fused=cuda)
    data_sampler = EpochSampler(len(faces), batch, seed, device)
    noise_gen = torch.Generator(device).manual_seed(seed + 1)
    model = torch.compile(net) if compile else net
    params, ema_params = list(net.parameters()), list(ema_net.parameters())

    identity = {"network": net_config, "size": size, "data": faces.describe()}  # must match to resume
    if prediction != "eps":
        identity["prediction"] = prediction
    if v_shift != 1.0:
        identity["v_shift"] = v_shift
    if warm_start is not None:
        identity["init"] = warm_start["model"]
        if state is None:
            net.load_state_dict(warm_start.pop("state"))
            ema_net.load_state_dict(net.state_dict())
        warm_start.pop("state", None)
    step, seen, seconds, last_loss = 0, 0, 0.0, float("nan")
    logged_at_resume = -1  # the step of the log's last row when resuming
    saved_step = None      # the step of the last checkpoint (None: none)
    evals: dict = {}  # the latest evaluation losses and the step they were measured at
    if state is not None:
        for key in identity.keys() | state["identity"].keys():
            if state["identity"].get(key) != identity.get(key):
                shown = {"prediction": "eps", "v_shift": 1.0, "init": "none (random weights)"}  # what absent means
                raise ValueError(f"cannot resume: the checkpoint's {key} differs\n  checkpoint: "
                                 f"{state['identity'].get(key, shown.get(key))}\n  now:        "
                                 f"{identity.get(key, shown.get(key))}")
        net.load_state_dict(state["net"])
        ema_net.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        step, seen, seconds, last_loss = state["step"], state["images"], state["seconds"], state["loss"]
        saved_step = step
        torch.set_rng_state(state["rng"]["torch"])
        if cuda and state["rng"]["cuda"] is not None:
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        noise_gen.set_state(state["rng"]["noise"])
        data_sampler.load_state_dict(state["rng"]["sampler"])
        logged_at_resume = _truncate_log(out / LOG, step)
        print(f"resuming {out} at step {step} ({seen:,} images seen; seed {data_sampler.seed}, the run's own)",
              file=sys.stderr)
        if step >= steps:
            print(f"note: the run is already at step {step}, --steps {steps}: nothing to train", file=sys.stderr)
        elif seen != step * batch:  # allowed (a larger batch on a larger machine), but the record keeps one batch
            print(f"note: --batch {batch} differs from the {seen / step:g} images a step this run has trained with: "
                  f"its record will say batch {batch}, and images_seen counts both", file=sys.stderr)

    def train_step() -> Tensor:
        idx, flip = data_sampler.next()
        x0 = from_uint8(images[idx])
        x0 = torch.where(flip.view(-1, 1, 1, 1), x0.flip(-1), x0)
        if channels_last:
            x0 = x0.contiguous(memory_format=torch.channels_last)
        t = objective.sample_t(batch, noise_gen)
        noise = torch.randn(x0.shape, device=device, generator=noise_gen)
        loss = objective(model, x0, t, noise)
        for group in opt.param_groups:
            group["lr"] = learning_rate(step, lr, warmup, steps, lr_end, decay_from)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip is not None:
            nn.utils.clip_grad_norm_(params, grad_clip)
        opt.step()
        torch._foreach_lerp_(ema_params, params, 1.0 - min(ema, (1 + step) / (10 + step)))
        return loss.detach()

    def record() -> dict:
        """The exported model's self-description."""
        target = "epsilon" if prediction == "eps" else "v" if v_shift == 1.0 else f"v (at SNR / {v_shift:g})"
        timesteps = "t uniform in 0..T-1" if t_density is None else f"t of relative density {t_density} in 0..T-1"
        objective = (f"{target} MSE, {timesteps}, random horizontal flips"
                     + (f", min-SNR-{min_snr:g} weighting" if min_snr else ""))
        return {"architecture": "small-unet", "network": net_config, "schedule": schedule.config,
                "image_size": size, "channels": 3, "learned_variance": False, "prediction": prediction,
                **({"v_shift": v_shift} if v_shift != 1.0 else {}),
                "training": {"data": faces.describe(), "validation": val_faces and val_faces.describe(),
                             "objective": objective,
                             "steps": step, "batch": batch, "images_seen": seen, "lr": lr, "warmup": warmup,
                             **({"lr_end": lr_end, "decay_from": decay_from} if lr_end is not None else {}),
                             "ema": ema, "ema_decay_at_step_s": "min(ema, (1 + s) / (10 + s))",
                             "weight_decay": weight_decay, "grad_clip": grad_clip,
                             "bf16_autocast": bf16, "device": torch.cuda.get_device_name(device) if cuda else "cpu",
                             "seconds": round(seconds, 1), "final_loss": last_loss, "seed": data_sampler.seed,
                             **({"initialised_from": warm_start} if warm_start else {}),
                             **{k: v for k, v in evals.items() if k != "step"}}}

    def checkpoint() -> None:
        nonlocal saved_step
        if loss_n:  # the steps since the last log row: their weights must not be saved if they diverged
            check_loss(loss_sum.item() / loss_n)
        if not all(bool(torch.isfinite(p).all()) for p in params):
            check_loss(math.nan, "weights")
        state = {"identity": identity, "step": step, "images": seen, "seconds": seconds, "loss": last_loss,
                 "net": net.state_dict(), "ema": ema_net.state_dict(), "opt": opt.state_dict(),
                 "rng": {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if cuda else None,
                         "noise": noise_gen.get_state(), "sampler": data_sampler.state_dict()}}
        with stop.protected(), io.all_or_none([state_path, out / MODEL, (out / MODEL).with_suffix(".json")]):
            atomic_write(state_path, lambda tmp: torch.save(state, tmp))  # the state and the exported model:
            save_checkpoint(ema_net, record(), out / MODEL)              # written whole, as one
        saved_step = step

    def sample_grid() -> None:
        prior = NetworkPrior(ema_net, schedule, (3, size, size), prediction=prediction, v_shift=v_shift)
        with objective.autocast:
            x = sample(prior, sample_n, steps=sample_steps, sampler=sampler,
                       generator=torch.Generator().manual_seed(SAMPLE_SEED))
        io.save_image(io.image_grid(x.float().clamp(-1, 1), nrow=math.ceil(math.sqrt(sample_n))),
                      out / "samples" / f"step-{step:07d}.png")

    def evaluate() -> None:
        n = min(len(val_images), len(images))  # as many training images, for a like-for-like comparison
        evals.update(step=step, val_loss=objective.evaluate(ema_net, val_images[:n], batch),
                     train_eval_loss=objective.evaluate(ema_net, images[:n], batch),
                     **{f"val_psnr_{t}": objective.tweedie_psnr(ema_net, val_images[:psnr_count], batch, t)
                        for t in PSNR_STEPS})

    if state is None:  # a new run starts a new log (rows of a run stopped before its first checkpoint go)
        (out / LOG).unlink(missing_ok=True)
    log = _Log(out / LOG)
    stop = StopRequest()
    loss_sum, loss_n, logged_step = torch.zeros((), device=device), 0, logged_at_resume

    first_loss = None  # the first loss this call logs: the scale a diverging loss is measured against

    def check_loss(loss: float, what: str = "loss") -> None:
        nonlocal first_loss
        if first_loss is None and math.isfinite(loss):
            first_loss = loss
        if not math.isfinite(loss) or loss > DIVERGED * first_loss:
            kept = (f"the last checkpoint, step {saved_step}, is {state_path}" if saved_step is not None
                    else "no checkpoint was written")
            found = f"loss {loss:.3g}" if what == "loss" else f"non-finite {what}"
            raise TrainingDiverged(f"training diverged at step {step} ({found}; loss {first_loss or loss:.3g} "
                                   f"when this run started logging): lower --lr (now {lr:g}) or raise --warmup "
                                   f"(now {warmup}); {kept}")

    def log_row() -> None:
        nonlocal last_loss, loss_sum, loss_n, logged_step
        if loss_n:
            last_loss = loss_sum.item() / loss_n
            check_loss(last_loss)
        fresh = {k: v for k, v in evals.items() if k != "step"} if evals.get("step") == step else {}
        log.write(step=step, images=seen, seconds=round(seconds, 2), lr=opt.param_groups[0]["lr"],
                  loss=last_loss, **fresh)
        loss_sum, loss_n, logged_step = torch.zeros((), device=device), 0, step

    deadline = None if max_minutes is None else started + 60 * max_minutes
    bar = tqdm(total=steps, initial=step, desc="training", dynamic_ncols=True, disable=not progress)
    net.train()
    with stop:
        while step < steps and not stop.requested and (deadline is None or time.monotonic() < deadline):
            tick = time.monotonic()
            loss_sum, loss_n = loss_sum + train_step(), loss_n + 1
            step, seen = step + 1, seen + batch
            seconds += time.monotonic() - tick
            bar.update(1)
            if val_images is not None and eval_every and step % eval_every == 0 and not stop.requested:
                with stop.droppable():
                    evaluate()
            if step % log_every == 0 or step == steps or evals.get("step") == step:
                log_row()
                bar.set_postfix(loss=f"{last_loss:.4f}")
            if sample_every and step % sample_every == 0 and not stop.requested:
                with stop.droppable():
                    sample_grid()
            if checkpoint_every and step % checkpoint_every == 0 and step < steps:
                checkpoint()
        bar.close()
        if step < steps and not stop.requested:
            print(f"stopped at step {step} of {steps}: the {max_minutes:g}-minute budget (--max-minutes) is spent; "
                  "--resume continues", file=sys.stderr)
        if loss_n or logged_step != step:
            log_row()
        checkpoint()  # the training first: a run killed during the final evaluation (minutes on a CPU) keeps it
        if val_images is not None and evals.get("step") != step and not stop.requested:
            with stop.droppable():
                evaluate()
            if evals.get("step") == step:
                _truncate_log(out / LOG, step - 1)  # this step's row again, with its evaluation
                log_row()
                checkpoint()
        if sample_every and step % sample_every and not stop.requested:
            with stop.droppable():
                sample_grid()
        if stop.requested:
            raise KeyboardInterrupt(f"training interrupted at step {step}; checkpoint saved in {state_path}")
    return out / MODEL


def _warm_start(init: str | Path, net_config: dict, widen: int = 1, seed: int = 0) -> dict:
    """The weights of model `init`, whose network must be `net_config`, made `widen` times as wide (the same
    function), and what to record of where they came from (its name, what it predicts, its own training
    record): {"model", "prediction", "v_shift", "training", "widened", "network", "state"}."""
    from .models import load_prior
    prior = load_prior(init)
    config = getattr(prior, "config", {})
    if not hasattr(prior, "net"):
        raise ValueError(f"cannot start from {init}: it is an analytic prior with no network to train")
    if config.get("architecture") != "small-unet" or SmallUNet.full_config(**config.get("network", {})) != net_config:
        raise ValueError(f"cannot start from {init}: its network ({config.get('architecture')}, "
                         f"{config.get('network')}) is not the one being trained ({net_config})")
    net = prior.net.float()
    if widen != 1:
        net = widen_network(net, widen, seed)
    return {"model": str(init), "prediction": prior.prediction, "v_shift": prior.v_shift,
            "training": config.get("training"), **({"widened": widen} if widen != 1 else {}),
            "network": net.config, "state": net.state_dict()}


def export(model: str | Path, dest: str | Path, **fields) -> Path:
    """Write a trained run's exported model (`out/model.safetensors`) as a float16 checkpoint `dest`, its
    description extended with `fields`: a name, a one-line description, the licence its data imposes, and
    the solver settings tuned for it (see `FACES64`)."""
    from .checkpoints import load_checkpoint
    prior = load_checkpoint(model)
    return save_checkpoint(prior.net, {**prior.config, **fields}, dest, dtype=torch.float16)


FACES64 = dict(name="faces64", description="64x64 faces: compact UNet trained on CelebA 000001-009500",
               licence="trained on CelebA images: non-commercial research use only (the CelebA terms)")


class _Log:
    """Rows of LOG_FIELDS appended to a CSV file (header written once)."""

    def __init__(self, path: Path):
        self.path = path

    def write(self, **row) -> None:
        new = not self.path.exists()
        with self.path.open("a", newline="") as f:
            w = csv.DictWriter(f, LOG_FIELDS)
            if new:
                w.writeheader()
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def _truncate_log(path: Path, step: int) -> int:
    """Drop log rows written after the checkpoint a run resumes from; returns the last kept row's step (-1:
    none)."""
    if not path.exists():
        return -1
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = [r for r in csv.DictReader(f) if int(r["step"]) <= step]
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is damaged (not text at byte {e.start}): delete it to resume (the log then starts "
                         "at the checkpoint's step)") from None

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, LOG_FIELDS)
            w.writeheader()
            w.writerows(rows)
    atomic_write(path, write)
    return int(rows[-1]["step"]) if rows else -1


def read_log(path: str | Path) -> list[dict]:
    """The rows of a training log, numbers as floats (empty cells as None)."""
    with Path(path).open(newline="") as f:
        return [{k: (float(v) if v not in ("", None) else None) for k, v in r.items()} for r in csv.DictReader(f)]
