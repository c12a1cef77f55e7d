"""The ADM UNet of guided-diffusion (Dhariwal & Nichol 2021, "Diffusion Models Beat GANs on Image Synthesis").

Written for this project, with state-dict keys and shapes identical to guided-diffusion checkpoints, so the
DPS FFHQ-256 model (`ffhq_10m.pt`) and OpenAI's ImageNet models load strictly. Settings use the names of
guided-diffusion's `model_config.yaml` / command-line flags:

  image_size, num_channels, num_res_blocks   resolution, base width, residual blocks per level
  channel_mult            widths per level: a tuple, "1,2,2", or "" for guided-diffusion's default by size
  attention_resolutions   feature-map sizes that get self-attention: "32,16,8", 16 or (32, 16, 8)
  num_heads, num_head_channels, num_heads_upsample   heads (num_head_channels > 0 wins: heads = C / that)
  use_new_attention_order  False: each head's channels hold [q; k; v] (legacy); True: [q_heads; k_heads; v_heads]
  learn_sigma             output 2 * 3 channels: epsilon, then the variance interpolation
  use_scale_shift_norm    FiLM-style timestep conditioning, GroupNorm(h) * (1 + scale) + shift
  resblock_updown         down/upsample with residual blocks instead of strided / nearest + conv
  class_cond              a label embedding for 1000 classes; forward then needs `y`
  dropout; use_fp16 and use_checkpoint are accepted for compatibility and change nothing: the network runs
  in its parameters' dtype (`.half()`, `.bfloat16()`) or under autocast.

The module layout (Sequential indices included) is the checkpoint format, so it follows guided-diffusion's;
the code does not.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn


NUM_CLASSES = 1000  # class_cond models are ImageNet models

# guided-diffusion's create_model defaults for the optional settings
DEFAULTS: dict = dict(
    channel_mult="", learn_sigma=False, class_cond=False, use_checkpoint=False, attention_resolutions="16",
    num_heads=1, num_head_channels=-1, num_heads_upsample=-1, use_scale_shift_norm=False, dropout=0.0,
    resblock_updown=False, use_fp16=False, use_new_attention_order=False,
)
REQUIRED = ("image_size", "num_channels", "num_res_blocks")
IGNORED = ("model_path",)  # DPS's model_config.yaml names its checkpoint file; the caller gives the path

CONFIGS: dict[str, dict] = {
    # DPS (Chung et al. 2023) FFHQ 256, configs/model_config.yaml: 93,563,910 parameters
    "ffhq256": dict(
        image_size=256, num_channels=128, num_res_blocks=1, channel_mult="", learn_sigma=True, class_cond=False,
        use_checkpoint=False, attention_resolutions="16", num_heads=4, num_head_channels=64, num_heads_upsample=-1,
        use_scale_shift_norm=True, dropout=0.0, resblock_updown=True, use_fp16=False, use_new_attention_order=False,
    ),
    # OpenAI 256x256_diffusion_uncond.pt (guided-diffusion README flags): 552,814,086 parameters
    "imagenet256-uncond": dict(
        image_size=256, num_channels=256, num_res_blocks=2, channel_mult="", learn_sigma=True, class_cond=False,
        use_checkpoint=False, attention_resolutions="32,16,8", num_heads=4, num_head_channels=64,
        num_heads_upsample=-1, use_scale_shift_norm=True, dropout=0.0, resblock_updown=True, use_fp16=True,
        use_new_attention_order=False,
    ),
}


# -- settings ----------------------------------------------------------------------------------------------
def channel_multipliers(image_size: int, channel_mult) -> tuple[float, ...]:
    """Per-level width multipliers; "" picks guided-diffusion's default for the image size."""
    if channel_mult in ("", None):
        by_size = {512: (0.5, 1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4), 64: (1, 2, 3, 4)}
        if image_size not in by_size:
            raise ValueError(f"no default channel_mult for image_size {image_size}; give one, e.g. '1,2,2'")
        return by_size[image_size]
    return _sizes("channel_mult", channel_mult)


def attention_rates(image_size: int, attention_resolutions) -> set[int]:
    """Feature-map sizes ("32,16,8", 16 or a sequence) -> downsampling rates image_size // size."""
    return {image_size // s for s in _sizes("attention_resolutions", attention_resolutions)}


def _sizes(key: str, value) -> tuple[int, ...]:
    """"32,16,8", 16 or a sequence of whole numbers >= 1 -> a tuple; ValueError naming `key` otherwise."""
    items = value.split(",") if isinstance(value, str) else [value] if isinstance(value, int) else value
    try:
        sizes = tuple(int(v.strip()) if isinstance(v, str) else v for v in items if not isinstance(v, str) or v.strip())
        valid = all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in sizes)
    except (TypeError, ValueError):
        valid = False
    if not valid or (key == "channel_mult" and not sizes):
        raise ValueError(f"{key} {value!r} is not a list of whole numbers >= 1 such as '1,2,4'")
    return sizes


def adm_config(name_or_yaml: str | Path | dict) -> dict:
    """The complete network settings of a built-in config name, a YAML file, or a dict of settings.

    Missing optional settings take guided-diffusion's defaults; an unknown setting is an error."""
    if isinstance(name_or_yaml, dict):
        given, source = dict(name_or_yaml), "config"
    elif str(name_or_yaml) in CONFIGS:
        given, source = dict(CONFIGS[str(name_or_yaml)]), str(name_or_yaml)
    elif Path(name_or_yaml).is_file():
        import yaml  # only needed for config files

        source = str(name_or_yaml)
        try:
            given = yaml.safe_load(Path(name_or_yaml).read_text()) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise ValueError(f"{source} is not a YAML file of settings ({' '.join(str(e).split())})") from None
        if not isinstance(given, dict):
            raise ValueError(f"{source} does not hold a mapping of settings")
    else:
        raise ValueError(f"unknown ADM config {str(name_or_yaml)!r}: not a built-in name "
                         f"({', '.join(CONFIGS)}) and no such YAML file")
    unknown = sorted(set(given) - set(DEFAULTS) - set(REQUIRED) - set(IGNORED))
    missing = [k for k in REQUIRED if k not in given]
    if unknown or missing:
        problems = ([f"unknown settings {', '.join(unknown)}"] if unknown else []) + \
                   ([f"missing {', '.join(missing)}"] if missing else [])
        raise ValueError(f"{source}: " + "; ".join(problems))
    return {**DEFAULTS, **{k: v for k, v in given.items() if k not in IGNORED}}


# -- building blocks ---------------------------------------------------------------------------------------
class GroupNorm32(nn.GroupNorm):
    """GroupNorm with 32 groups, computed in float32 whatever the input's dtype (as guided-diffusion does)."""

    def __init__(self, channels: int):
        super().__init__(32, channels)

    def forward(self, x: Tensor) -> Tensor:
        return F.group_norm(x.float(), self.num_groups, self.weight.float(), self.bias.float(), self.eps).to(x.dtype)


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding (B,) -> (B, dim): [cos(t f_i), sin(t f_i)], f_i = max_period^(-i / half), float32."""
    half = dim // 2
    # made on t's device: a host-to-device copy here would synchronise with the GPU at every call
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return F.pad(torch.cat([torch.cos(args), torch.sin(args)], dim=-1), (0, dim % 2))


def _zero(module: nn.Module) -> nn.Module:
    """Zero-initialise a residual branch's last layer (ADM's initialisation)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, timestep conditioning, GroupNorm-SiLU-dropout-conv, plus a skip connection.
    resample="down"/"up" halves/doubles the resolution between the first activation and convolution."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int | None = None, *, dropout: float = 0.0,
                 scale_shift: bool = False, resample: str | None = None):
        super().__init__()
        out = out_channels or channels
        self.scale_shift = scale_shift
        self.resample = resample
        self.in_layers = nn.Sequential(GroupNorm32(channels), nn.SiLU(), nn.Conv2d(channels, out, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, 2 * out if scale_shift else out))
        self.out_layers = nn.Sequential(GroupNorm32(out), nn.SiLU(), nn.Dropout(dropout),
                                        _zero(nn.Conv2d(out, out, 3, padding=1)))
        self.skip_connection = nn.Identity() if out == channels else nn.Conv2d(channels, out, 1)

    def _resample(self, x: Tensor) -> Tensor:
        if self.resample == "down":
            return F.avg_pool2d(x, 2)
        if self.resample == "up":
            return F.interpolate(x, scale_factor=2, mode="nearest")
        return x

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        norm, act, conv = self.in_layers
        h = conv(self._resample(act(norm(x))))
        x = self._resample(x)
        e = self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        norm, act, drop, conv = self.out_layers
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = norm(h) * (1 + scale) + shift
        else:
            h = norm(h + e)
        return self.skip_connection(x) + conv(drop(act(h)))


class AttentionBlock(nn.Module):
    """Multi-head self-attention over all positions, with a residual connection.

    qkv is a 1x1 conv to 3C channels. Legacy order (the DPS and OpenAI 256 models): per head, [q; k; v].
    New order: all heads' q, then all k, then all v."""

    def __init__(self, channels: int, heads: int, new_order: bool = False):
        super().__init__()
        if channels % heads:
            raise ValueError(f"{channels} channels do not split into {heads} attention heads")
        self.heads = heads
        self.new_order = new_order
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = _zero(nn.Conv1d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        b, c, height, width = x.shape
        x = x.reshape(b, c, -1)
        # the 1x1 convs as matmuls on (B, L, C), so q, k, v come out with contiguous head channels (fast SDPA)
        qkv = F.linear(self.norm(x).transpose(1, 2), self.qkv.weight[..., 0], self.qkv.bias)  # (B, L, 3C)
        ch = c // self.heads
        if self.new_order:
            q, k, v = qkv.reshape(b, -1, 3, self.heads, ch).unbind(2)
        else:
            q, k, v = qkv.reshape(b, -1, self.heads, 3, ch).unbind(3)
        # (B, L, heads, ch) -> (B, heads, L, ch); SDPA's default scale 1 / sqrt(ch) is the reference's
        a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        h = F.linear(a.transpose(1, 2).reshape(b, -1, c), self.proj_out.weight[..., 0], self.proj_out.bias)
        return (x + h.transpose(1, 2)).reshape(b, c, height, width)


class Downsample(nn.Module):
    """Stride-2 3x3 convolution (used when resblock_updown is off)."""

    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 convolution (used when resblock_updown is off)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class Block(nn.ModuleList):
    """One entry of input_blocks / middle_block / output_blocks: its layers in order, ResBlocks taking `emb`."""

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


# -- the network -------------------------------------------------------------------------------------------
class ADMUNet(nn.Module):
    """The guided-diffusion UNet: forward(x (B, 3, S, S), t (B,) integer timesteps[, y (B,) labels])
    -> (B, 6, S, S) with learn_sigma (epsilon, then the variance interpolation), else (B, 3, S, S)."""

    def __init__(self, *, image_size: int, num_channels: int, num_res_blocks: int,
                 channel_mult: str | tuple = "",
                 attention_resolutions: str | int | tuple = "16",  # feature-map sizes with attention
                 num_heads: int = 1, num_head_channels: int = -1, num_heads_upsample: int = -1,
                 learn_sigma: bool = False, use_scale_shift_norm: bool = False, resblock_updown: bool = False,
                 use_new_attention_order: bool = False, dropout: float = 0.0, class_cond: bool = False,
                 use_fp16: bool = False,  # accepted; the network runs in its parameters' dtype or autocast
                 use_checkpoint: bool = False):  # accepted and ignored
        super().__init__()
        self.image_size = image_size
        self.num_channels = num_channels
        self.out_channels = 6 if learn_sigma else 3
        self.num_classes = NUM_CLASSES if class_cond else None
        mults = channel_multipliers(image_size, channel_mult)
        rates = attention_rates(image_size, attention_resolutions)
        emb_ch = 4 * num_channels

        def heads(ch: int, n: int) -> int:
            if num_head_channels == -1:
                return n
            if num_head_channels < 1:
                raise ValueError(f"num_head_channels {num_head_channels} is neither -1 (heads by num_heads) nor >= 1")
            if ch % num_head_channels:
                raise ValueError(f"{ch} channels are not a multiple of num_head_channels={num_head_channels}")
            return ch // num_head_channels

        def res(ch_in: int, ch_out: int | None = None, resample: str | None = None) -> ResBlock:
            return ResBlock(ch_in, emb_ch, ch_out, dropout=dropout, scale_shift=use_scale_shift_norm, resample=resample)

        def attn(ch: int, n: int) -> AttentionBlock:
            return AttentionBlock(ch, heads(ch, n), use_new_attention_order)

        self.time_embed = nn.Sequential(nn.Linear(num_channels, emb_ch), nn.SiLU(), nn.Linear(emb_ch, emb_ch))
        if self.num_classes is not None:
            self.label_emb = nn.Embedding(self.num_classes, emb_ch)

        # encoder: a stem conv, then per level num_res_blocks ResBlocks (+ attention) and a downsampling block
        ch = first = int(mults[0] * num_channels)
        self.input_blocks = nn.ModuleList([Block([nn.Conv2d(3, ch, 3, padding=1)])])
        skips = [ch]  # channels of every encoder output, consumed by the decoder in reverse
        rate = 1
        for level, mult in enumerate(mults):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [res(ch, int(mult * num_channels))]
                ch = int(mult * num_channels)
                if rate in rates:
                    layers.append(attn(ch, num_heads))
                self.input_blocks.append(Block(layers))
                skips.append(ch)
            if level < len(mults) - 1:
                self.input_blocks.append(Block([res(ch, ch, "down") if resblock_updown else Downsample(ch)]))
                skips.append(ch)
                rate *= 2

        self.middle_block = Block([res(ch), attn(ch, num_heads), res(ch)])

        # decoder: per level num_res_blocks + 1 ResBlocks on [h, skip] (+ attention), then upsampling
        up_heads = num_heads if num_heads_upsample == -1 else num_heads_upsample
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(mults))):
            for i in range(num_res_blocks + 1):
                layers = [res(ch + skips.pop(), int(mult * num_channels))]
                ch = int(mult * num_channels)
                if rate in rates:
                    layers.append(attn(ch, up_heads))
                if level and i == num_res_blocks:
                    layers.append(res(ch, ch, "up") if resblock_updown else Upsample(ch))
                    rate //= 2
                self.output_blocks.append(Block(layers))

        self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(), _zero(nn.Conv2d(first, self.out_channels, 3, padding=1)))

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        dtype = self.out[2].weight.dtype  # compute in the parameters' dtype; return the input's
        t = torch.as_tensor(t, device=x.device).reshape(-1).expand(x.shape[0])
        emb = self.time_embed(timestep_embedding(t, self.num_channels).to(dtype))
        if self.num_classes is not None:
            if y is None:
                raise ValueError("this ADM model is class-conditional: pass class labels y of shape (B,)")
            emb = emb + self.label_emb(y)
        elif y is not None:
            raise ValueError("this ADM model is unconditional: it takes no class labels")
        h = x.to(dtype)
        skips = []
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h).to(x.dtype)


def build_adm(name_or_yaml: str | Path | dict, device: torch.device | str | None = None) -> ADMUNet:
    """An ADMUNet from a built-in config name, a YAML file or a settings dict (device="meta": no memory)."""
    config = adm_config(name_or_yaml)
    if device is None:
        return ADMUNet(**config)
    with torch.device(device):
        return ADMUNet(**config)
