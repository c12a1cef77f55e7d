#!/usr/bin/env bash
# Train the embedded 64x64 face model (the compact UNet, config "default") on one CUDA GPU in one short
# run, export its EMA weights in float16, and draw the model card's sample grids.
#
# Prepare the data first (from the repository root, on any machine; the packs are about 27 MB together):
#   diffprior pack ../shared/data/celeba-10k gpu-data/celeba64-train.zip --first 000001 --last 009500
#   diffprior pack ../shared/data/celeba-10k gpu-data/celeba64-val.zip --first 009501 --last 010000
# Then, on the GPU machine, from the repository root:
#   scripts/gpu_train_face.sh gpu-data OUT_DIR [MINUTES]
# OUT_DIR receives faces64.safetensors/.json (fp16, ~12 MB), log.csv, samples_ddpm1000.png (64 faces,
# 1000 ancestral steps), samples_ddim100.png (64 faces, 100 DDIM steps) and ema_fp32.safetensors/.json
# (for a later warm start). Environment: CONFIG (default "default"), BATCH (default 256).
set -euo pipefail
data=${1:?usage: gpu_train_face.sh DATA_DIR OUT_DIR [MINUTES]}
out=${2:?usage: gpu_train_face.sh DATA_DIR OUT_DIR [MINUTES]}
minutes=${3:-8}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$out"
python3 -m diffprior train --data "$data/celeba64-train.zip" --val "$data/celeba64-val.zip" \
    --out "$out/run" --config "${CONFIG:-default}" --batch "${BATCH:-256}" --max-minutes "$minutes" \
    --steps 1000000 --eval-every 500 --checkpoint-every 1000
python3 - "$out" <<'PY'
import json, shutil, sys
from pathlib import Path
import torch
from diffprior.checkpoints import load_checkpoint, save_checkpoint
out = Path(sys.argv[1])
prior = load_checkpoint(out / "run" / "model.safetensors")
config = dict(prior.config, name="faces64",
              licence="trained on CelebA images: non-commercial research use only (the CelebA terms)")
save_checkpoint(prior.net, config, out / "faces64.safetensors", dtype=torch.float16)
save_checkpoint(prior.net, config, out / "ema_fp32.safetensors")
shutil.copy(out / "run" / "log.csv", out / "log.csv")
print(json.dumps(config.get("training", {}), indent=1))
PY
python3 -m diffprior sample --model "$out/faces64.safetensors" --n 64 --out "$out/samples_ddpm1000.png" --seed 0
python3 -m diffprior sample --model "$out/faces64.safetensors" --n 64 --sampler ddim --steps 100 \
    --out "$out/samples_ddim100.png" --seed 0
ls -la "$out"
