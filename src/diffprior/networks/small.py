"""SmallUNet: the project's own compact diffusion UNet (the embedded face model), trained to predict eps or v.

An ADM-style design (Dhariwal & Nichol 2021, "Diffusion Models Beat GANs"): residual blocks with
GroupNorm + SiLU whose second normalisation is modulated by the timestep (scale-shift, FiLM),
a sinusoidal timestep embedding followed by an MLP, multi-head self-attention at the low resolutions
(through F.scaled_dot_product_attention), and skip connections from every down-path block to the up path.
The last layer of every residual branch, of every attention block and of the output is
zero-initialised, so each block starts as the identity and the untrained network outputs 0.

Input (B, C, H, W) images in [-1, 1] and integer timesteps (B,); output (B, C, H, W): the noise estimate,
or v for a v-predicting model (the checkpoint's "prediction"; `NetworkPrior` turns it into eps).
With `patch` p > 1 the stem is a pixel-unshuffle (each p x p block of pixels becomes p^2 C channels) and
the output a pixel-shuffle, so the first level runs at H / p: about p^2 times cheaper at full resolution.
H and W must be divisible by p * 2 ** (len(mult) - 1); attention resolutions refer to `image_size`.
"""

from __future__ import annotations

import inspect
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .adm import Downsample, Upsample  # the same strided conv and nearest + conv

# Named settings (keyword arguments of SmallUNet). Forward times: one 64x64 image on 2 CPU cores.
CONFIGS: dict[str, dict] = {
    # 0.19M parameters: for tests
    "tiny": dict(base=16, mult=(1, 2), blocks=1, attn=(8,), head_channels=16, image_size=16),
    # 5.8M parameters (12 MB in float16), about 70 ms per image (35 ms batched): the embedded face model
    "default": dict(base=32, mult=(1, 2, 3, 4), blocks=2, attn=(16, 8), head_channels=32),
    # 18.4M parameters, a 2x2 pixel-unshuffle stem: as fast as "default" on the CPU, three times its width
    "wide": dict(base=64, mult=(1, 2, 2, 4), blocks=2, attn=(16, 8), head_channels=32, patch=2),
    # 5.5M parameters, the "default" shape behind a 2x2 pixel-unshuffle stem: about 2.5x faster
    "fast": dict(base=32, mult=(1, 2, 3, 4), blocks=2, attn=(16, 8), head_channels=32, patch=2),
    # 19.4M parameters (39 MB in float16), about 140 ms per image: the ADM-style model of a first GPU probe
    "large": dict(base=64, mult=(1, 2, 2, 4), blocks=2, attn=(16, 8)),
}


def network_config(name: str) -> dict:
    """The full keyword arguments of a named configuration, defaults filled in (what a checkpoint records)."""
    if name not in CONFIGS:
        raise ValueError(f"unknown SmallUNet config {name!r}; choose from {', '.join(CONFIGS)}")
    return SmallUNet.full_config(**CONFIGS[name])


def _check_whole(key: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{key} {value!r} is not a whole number >= 1")


def norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups, or fewer when the channel count is not a multiple of 32."""
    return nn.GroupNorm(math.gcd(32, channels), channels)


def zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """(B,) timesteps -> (B, dim) features cat[cos(t f_i), sin(t f_i)], f_i = max_period ** (-i / half)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class ResBlock(nn.Module):
    """x + F(x, emb): norm-SiLU-conv, then norm modulated by the embedding (h * (1 + scale) + shift),
    SiLU, dropout and a zero-initialised conv. A 1x1 conv matches the skip when channels change."""

    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm1 = norm(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * cout)
        self.norm2 = norm(cout)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero(nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class Attention(nn.Module):
    """x + proj(softmax(q k^T / sqrt(d)) v) over all positions, in heads of `head_channels` channels."""

    def __init__(self, channels: int, head_channels: int):
        super().__init__()
        if channels % head_channels:
            raise ValueError(f"{channels} channels do not split into heads of {head_channels}")
        self.heads = channels // head_channels
        self.norm = norm(channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = zero(nn.Linear(channels, channels))

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
        # (3, B, heads, HW, d), each head's channels contiguous as fused attention kernels require
        q, k, v = self.qkv(tokens).view(B, H * W, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        h = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, H * W, C)
        return x + self.proj(h).transpose(1, 2).reshape(B, C, H, W)


class Block(nn.Module):
    """A residual block, optionally followed by attention."""

    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float, attn: bool, head_channels: int):
        super().__init__()
        self.res = ResBlock(cin, cout, emb_dim, dropout)
        self.attn = Attention(cout, head_channels) if attn else None

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        x = self.res(x, emb)
        return self.attn(x) if self.attn is not None else x


class SmallUNet(nn.Module):
    def __init__(self, *,
                 channels: int = 3,                        # image channels in and out
                 base: int = 64,                           # channels at full resolution
                 mult: tuple[int, ...] = (1, 2, 2, 4),     # channel multiplier per level; each level halves H, W
                 blocks: int = 2,                          # residual blocks per level on the down path
                 attn: tuple[int, ...] = (16, 8),          # feature-map sizes (of image_size) with attention
                 head_channels: int = 64,                  # channels per attention head
                 dropout: float = 0.0,                     # dropout inside the residual blocks
                 image_size: int = 64,                     # the training size, to place attention by resolution
                 patch: int = 1):                          # pixel-unshuffle stem: the first level runs at H / patch
        super().__init__()
        self.config = self.full_config(channels=channels, base=base, mult=mult, blocks=blocks, attn=attn,
                                       head_channels=head_channels, dropout=dropout, image_size=image_size,
                                       patch=patch)
        mult, attn = tuple(mult), set(attn)
        emb_dim = 4 * base
        self.base, self.patch = base, patch
        self.levels = len(mult)
        self.time_mlp = nn.Sequential(nn.Linear(base, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.conv_in = nn.Conv2d(channels * patch ** 2, base, 3, padding=1)

        def block(cin, cout, res):
            return Block(cin, cout, emb_dim, dropout, res in attn, head_channels)

        # Down path: every block's output (and the input conv's, and each downsample's) is a skip.
        self.down = nn.ModuleList()
        skips, ch, res = [base], base, image_size // patch
        for i, m in enumerate(mult):
            for _ in range(blocks):
                self.down.append(block(ch, base * m, res))
                ch = base * m
                skips.append(ch)
            if i < len(mult) - 1:
                self.down.append(Downsample(ch))
                skips.append(ch)
                res //= 2
        # The middle always attends: at the lowest resolution it is the cheapest place for global context.
        self.mid = nn.ModuleList([Block(ch, ch, emb_dim, dropout, True, head_channels),
                                  ResBlock(ch, ch, emb_dim, dropout)])
        # Up path: blocks + 1 blocks per level, each consuming one skip, then an upsample.
        self.up = nn.ModuleList()
        for i, m in reversed(list(enumerate(mult))):
            for _ in range(blocks + 1):
                self.up.append(block(ch + skips.pop(), base * m, res))
                ch = base * m
            if i > 0:
                self.up.append(Upsample(ch))
                res *= 2
        self.out = nn.Sequential(norm(ch), nn.SiLU(), zero(nn.Conv2d(ch, channels * patch ** 2, 3, padding=1)))

    @staticmethod
    def full_config(**kwargs) -> dict:
        """All keyword arguments with defaults filled in, as JSON-friendly values."""
        params = inspect.signature(SmallUNet.__init__).parameters
        unknown = set(kwargs) - set(params)
        if unknown:
            raise TypeError(f"unknown SmallUNet settings: {', '.join(sorted(unknown))}")
        cfg = {k: kwargs.get(k, p.default) for k, p in params.items() if k != "self"}
        for key in ("channels", "base", "blocks", "head_channels", "image_size", "patch"):
            _check_whole(key, cfg[key])
        for key in ("mult", "attn"):
            if not isinstance(cfg[key], (list, tuple)) or (key == "mult" and not cfg[key]):
                raise ValueError(f"{key} {cfg[key]!r} is not a list of whole numbers >= 1")
            for value in cfg[key]:
                _check_whole(key, value)
        if isinstance(cfg["dropout"], bool) or not isinstance(cfg["dropout"], (int, float)) \
                or not 0 <= cfg["dropout"] < 1:
            raise ValueError(f"dropout {cfg['dropout']!r} is not a number in [0, 1)")
        return {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        factor = self.patch * 2 ** (self.levels - 1)
        if x.shape[-1] % factor or x.shape[-2] % factor:
            raise ValueError(f"image size {tuple(x.shape[-2:])} must be divisible by {factor}")
        emb = self.time_mlp(timestep_embedding(t.reshape(-1).expand(x.shape[0]), self.base))
        h = self.conv_in(F.pixel_unshuffle(x, self.patch) if self.patch > 1 else x)
        skips = [h]
        for layer in self.down:
            h = layer(h) if isinstance(layer, Downsample) else layer(h, emb)
            skips.append(h)
        for layer in self.mid:
            h = layer(h, emb)
        for layer in self.up:
            h = layer(h) if isinstance(layer, Upsample) else layer(torch.cat([h, skips.pop()], dim=1), emb)
        h = self.out(h)
        return F.pixel_shuffle(h, self.patch) if self.patch > 1 else h


def widen(net: SmallUNet, factor: int, seed: int = 0) -> SmallUNet:
    """The same network with every layer `factor` times as wide, computing the same function (Net2WiderNet,
    Chen et al. 2016, "Net2Net: Accelerating Learning via Knowledge Transfer"): a larger network that starts
    from trained weights instead of from scratch.

    Each channel becomes `factor` copies (new channel i is old channel i // factor, so every GroupNorm group
    holds its old channels, each `factor` times, with unchanged statistics); attention gets `factor` copies of
    each head. A layer reading copies splits each old weight among them in random proportions (summing to 1):
    the output is unchanged, but the copies receive different gradients, so training pulls them apart."""
    if not isinstance(factor, int) or factor < 1:
        raise ValueError(f"widening factor must be a positive integer, not {factor!r}")
    if net.patch != 1:
        raise ValueError("widening supports networks without a pixel-unshuffle stem (patch 1)")
    wide = SmallUNet(**{**net.config, "base": net.base * factor}).to(next(net.parameters()).device)
    gen = torch.Generator().manual_seed(seed)

    def copies(n: int) -> Tensor:  # new channel -> old channel
        return torch.arange(n * factor) // factor

    def heads(n: int) -> Tensor:  # whole heads copied: new channel i of q, k or v is old channel i mod n
        return torch.arange(n * factor) % n

    def timestep_features(n: int) -> Tensor:  # old sinusoid j sits at new index j * factor (-1: a new one)
        half, new = n // 2, torch.full((n * factor,), -1)
        new[torch.arange(half) * factor] = torch.arange(half)
        new[half * factor + torch.arange(half) * factor] = half + torch.arange(half)
        return new

    def spread(old: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
        """Weight (out, in, ...) for new outputs `rows` and inputs `cols` (old indices, -1: zero)."""
        ok = cols >= 0
        share = torch.rand(len(rows), len(cols), generator=gen).add_(0.5) * ok
        total = torch.zeros(len(rows), old.shape[1]).index_add_(1, cols[ok], share[:, ok])
        share[:, ok] /= total[:, cols[ok]]
        w = old.detach().cpu()[rows][:, cols.clamp(min=0)]
        return w * share.reshape(*share.shape, *[1] * (old.dim() - 2))

    old_modules = dict(net.named_modules())
    with torch.no_grad():
        for name, new in wide.named_modules():
            old = old_modules[name]
            if isinstance(new, nn.GroupNorm):
                if new.num_groups != old.num_groups:
                    raise ValueError(f"cannot widen {name}: its GroupNorm groups would change "
                                     f"({old.num_groups} -> {new.num_groups})")
                rows = copies(old.num_channels)
                new.weight.copy_(old.weight[rows])
                new.bias.copy_(old.bias[rows])
            elif isinstance(new, (nn.Conv2d, nn.Linear)):
                n_out, n_in = old.weight.shape[:2]
                rows = (torch.arange(n_out) if name == "out.2"
                        else torch.cat([i * n_out // 3 + heads(n_out // 3) for i in range(3)])
                        if name.endswith(".qkv") else copies(n_out))
                cols = (torch.arange(n_in) if name == "conv_in"
                        else timestep_features(n_in) if name == "time_mlp.0"
                        else heads(n_in) if name.endswith(".proj") else copies(n_in))
                new.weight.copy_(spread(old.weight, rows, cols))
                new.bias.copy_(old.bias[rows.to(old.bias.device)])
    return wide
