#!/usr/bin/env bash
# Prepare what scripts/gpu_run.sh carries to the GPU machine (both folders are git-ignored, never committed):
#   gpu-data/celeba64-train.zip   CelebA 000001-009500 at 64x64, a JPEG (q95) pack, about 26 MB
#   gpu-data/celeba64-val.zip     CelebA 009501-010000, the same, about 1.5 MB
#   gpu-data/celeba-val/          the photos 009501-009600 as they are, for `diffprior reproduce`
#   reference/dps/                the official DPS code (its Python files and configs), for the speed comparison
# Usage, from the repository root, with diffprior installed:
#   scripts/gpu_prepare.sh CELEBA_FOLDER [DPS_CLONE]
# DPS_CLONE: an existing clone of github.com/DPS2022/diffusion-posterior-sampling; without it, it is cloned.
set -euo pipefail
celeba=${1:?usage: gpu_prepare.sh CELEBA_FOLDER [DPS_CLONE]}
clone=${2:-}
dps_commit=effbde7325b22ce8dc3e2c06c160c021e743a12d   # the commit BENCHMARKS.md's comparison names
mkdir -p gpu-data/celeba-val reference
[ -f gpu-data/celeba64-train.zip ] || diffprior pack "$celeba" gpu-data/celeba64-train.zip --first 000001 --last 009500
[ -f gpu-data/celeba64-val.zip ] || diffprior pack "$celeba" gpu-data/celeba64-val.zip --first 009501 --last 010000
for i in $(seq 9501 9600); do cp "$celeba/$(printf '%06d' "$i").jpg" gpu-data/celeba-val/; done
if [ ! -d reference/dps/guided_diffusion ]; then
    if [ -z "$clone" ]; then
        clone=$(mktemp -d)/dps
        git clone https://github.com/DPS2022/diffusion-posterior-sampling "$clone"
    fi
    mkdir -p reference/dps
    # the code and configs only (its figures and sample images are not needed)
    (cd "$clone" && git archive "$dps_commit" guided_diffusion configs util sample_condition.py README.md) \
        | tar -x -C reference/dps
fi
du -sh gpu-data reference
