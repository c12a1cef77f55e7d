#!/usr/bin/env bash
# The prepared GPU run (docs/GPU.md): everything a short loan of one GPU should produce, in one command that
# stops itself inside DEADLINE_S (default 570 s), each part cut short cleanly when time runs low:
#   1. train   the face model, warm-started from the shipped faces64 (same network), TRAIN_MIN (3) minutes;
#              the trainer logs its images/s from its first steps (work/train/log.csv, train.log)
#      export  its EMA weights in float16 as OUT/faces64.safetensors + .json (a network over 16 MB, e.g.
#              CONFIG=large, in parts OUT/faces64.safetensors.part00, part01, ...; run.log holds the sha256)
#      card    Tweedie PSNR/SSIM/LPIPS at t = 100/300/500 on the 500 CelebA validation faces for the new
#              and the shipped model, the training curves, 64-face grids (1000 DDPM / 100 DDIM steps)
#   2. bench   scripts/gpu_bench.sh on the FFHQ-256 ADM network (random weights): DPS fp32 and bf16 at
#              several batch sizes, the official DPS loop on the same GPU (scripts/reference_dps.py),
#              bf16 against fp32 on the face model
#   3. tables  `diffprior reproduce` (Tables 1-3) at STEPS (1000) steps on IMAGES (100) CelebA validation
#              faces with the new model
# OUT receives at most 8 files (what a loan sends back): faces64.safetensors (or its 2-3 parts), faces64.json, card.tar.gz,
# bench.tar.gz, reproduce.tar.gz, run.log. Intermediate files stay in WORK (default a temporary folder).
#
#   scripts/gpu_prepare.sh CELEBA_FOLDER      # once, on a machine with the data (and internet for the clone)
#   scripts/gpu_run.sh OUT                    # on the GPU machine, from the repository root
#   TINY=1 scripts/gpu_run.sh OUT             # the same end to end on a CPU in about 7 minutes, tiny settings
#
# Settings (environment): DATA (gpu-data), REFERENCE (reference/dps), TRAIN_MIN (3), BATCH (256), LR (1e-4),
# INIT (faces64), WIDEN (1: the shipped network K times as wide, started from its weights as the same function),
# T_DENSITY (0:1,600:0.25), CONFIG (default), VAL_COUNT (500: the trainer's validation faces),
# IMAGES (100), STEPS (1000), SAMPLES (64), DEADLINE_S (570), DEVICE (cuda); PARTS (train bench tables: which
# parts run), BENCH_S (110: the bench's budget), BENCH_SKIP (bench stages not to run, e.g. those a loan measured),
# TRAIN_ARGS (more options for `diffprior train`, e.g. --compile).
set -u
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="$(mkdir -p "${1:?usage: gpu_run.sh OUT}" && cd "$1" && pwd)"
WORK="${WORK:-$(mktemp -d)}"
mkdir -p "$WORK"
DATA="$(cd "${DATA:-$ROOT/gpu-data}" && pwd)" || { echo "no data folder: run scripts/gpu_prepare.sh first"; exit 1; }
REFERENCE="${REFERENCE:-$ROOT/reference/dps}"
if [ -n "${TINY:-}" ]; then  # a CPU dry run of every stage
    : "${DEVICE:=cpu}" "${TRAIN_MIN:=0.3}" "${BATCH:=8}" "${VAL_COUNT:=16}" "${IMAGES:=2}" "${STEPS:=4}" "${SAMPLES:=4}"
    : "${DEADLINE_S:=1200}" "${EVAL_RANGE:=:009501:009508}" "${CARD_S:=400}"
    export STEPS_BENCH=2 WARMUP=1 BENCH_CONFIG="$WORK/tiny_adm.yaml" BENCH_MODEL=""
    printf '%s\n' "image_size: 32" "num_channels: 32" "num_res_blocks: 1" "channel_mult: '1,2'" "learn_sigma: True" \
        "class_cond: False" "use_checkpoint: False" "attention_resolutions: 16" "num_heads: 4" "num_head_channels: 16" \
        "num_heads_upsample: -1" "use_scale_shift_norm: True" "dropout: 0.0" "resblock_updown: True" "use_fp16: False" \
        "use_new_attention_order: False" > "$BENCH_CONFIG"
fi
DEVICE="${DEVICE:-cuda}" TRAIN_MIN="${TRAIN_MIN:-3}" BATCH="${BATCH:-256}" LR="${LR:-1e-4}" INIT="${INIT:-faces64}"
CONFIG="${CONFIG:-default}" VAL_COUNT="${VAL_COUNT:-500}" IMAGES="${IMAGES:-100}" STEPS="${STEPS:-1000}" SAMPLES="${SAMPLES:-64}"
DEADLINE_S="${DEADLINE_S:-570}" T_DENSITY="${T_DENSITY:-0:1,600:0.25}"  # as faces64 versions 4 and 5 were trained
WIDEN="${WIDEN:-1}" PARTS="${PARTS:-train bench tables}" BENCH_S="${BENCH_S:-110}"
part() { [[ " $PARTS " == *" $1 "* ]]; }
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
LOG="$OUT/run.log"
START=$(date +%s)
: >"$LOG"
say() { echo "[$(($(date +%s) - START))s] $*" | tee -a "$LOG"; }

stage() {  # stage NAME LIMIT_S RESERVE_S COMMAND...: run within LIMIT_S and what the deadline leaves after
    local name=$1 limit=$2 reserve=$3 left rc t0   # RESERVE_S (kept for the stages after it)
    shift 3
    left=$((DEADLINE_S - ($(date +%s) - START) - reserve))
    if ((left < 15)); then
        say "skip  $name: out of time"
        return 1
    fi
    ((limit > left)) && limit=$left
    say "start $name (limit ${limit}s)"
    t0=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" >"$WORK/$name.log" 2>&1
    rc=$?
    say "done  $name: exit $rc after $(($(date +%s) - t0))s"
    tr '\r' '\n' <"$WORK/$name.log" | grep -v -e '^ *$' -e 'it/s]' | tail -n 6 | cut -c1-240 | tee -a "$LOG"  # no progress bars
    return $rc
}
DP=(python3 -m diffprior)
say "gpu_run: device $DEVICE, work in $WORK, data $DATA"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda,
  torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')" 2>&1 | tee -a "$LOG"

# 1. the face model
NEW=""
if part train; then
    train_seconds=$(python3 -c "print(int($TRAIN_MIN * 60 + 90))")
    init=(--init "$INIT" --widen "$WIDEN")
    [ "$CONFIG" = default ] || init=()  # the shipped weights fit the default network only
    stage train "$train_seconds" 300 "${DP[@]}" train --data "$DATA/celeba64-train.zip" --val "$DATA/celeba64-val.zip" \
        --out "$WORK/train" --config "$CONFIG" "${init[@]}" --batch "$BATCH" --lr "$LR" --warmup 100 --val-count "$VAL_COUNT" \
        --t-density "$T_DENSITY" --max-minutes "$TRAIN_MIN" --steps 1000000 --eval-every 250 --checkpoint-every 500 --device "$DEVICE" \
        ${TRAIN_ARGS:-}
    if [ -f "$WORK/train/model.safetensors" ]; then
        stage export 60 280 python3 - "$WORK/train/model.safetensors" "$WORK/faces64.safetensors" <<'PY' && NEW="$WORK/faces64.safetensors"
import json, sys
from diffprior.models import load_prior
from diffprior.train import FACES64, export
settings = load_prior("faces64").config.get("solver_settings", {})  # the shipped model's, until retuned
run = load_prior(export(sys.argv[1], sys.argv[2], **FACES64, solver_settings=settings)).config["training"]
keys = ("device", "steps", "batch", "lr", "images_seen", "seconds", "final_loss", "val_psnr_100", "val_psnr_300")
print(json.dumps({k: run.get(k) for k in keys}), "images/s:", round(run["images_seen"] / max(run["seconds"], 1e-9), 1))
PY
    fi
    if [ -n "$NEW" ]; then  # a loan returns files of at most 16 MiB: a larger network's weights come back in parts
        cp "$WORK/faces64.json" "$OUT/"
        if (($(stat -c %s "$NEW") <= 16000000)); then cp "$NEW" "$OUT/"
        else split -b 16000000 -d "$NEW" "$OUT/faces64.safetensors.part"; say "weights split: cat OUT/faces64.safetensors.part* > faces64.safetensors"
        fi
        (cd "$WORK" && sha256sum faces64.safetensors | tee -a "$LOG")
    fi
    CARD=(python3 "$ROOT/scripts/model_card.py" --device "$DEVICE" --batch 250 --eval "celeba-val=$DATA/celeba64-val.zip${EVAL_RANGE:-}")
    if [ -n "$NEW" ]; then  # the card's numbers and figures for the new model, then the Tweedie numbers of the shipped one
        stage card-new "${CARD_S:-90}" 220 "${CARD[@]}" --model "$NEW" --log "$WORK/train/log.csv" --samples "$SAMPLES" --out "$WORK/card-new"
    fi
    stage card-shipped 45 210 "${CARD[@]}" --model faces64 --samples 0 --out "$WORK/card-shipped"
    (cd "$WORK" && cp train/log.csv card-new/ 2>/dev/null; tar czf "$OUT/card.tar.gz" card-* train.log card-*.log 2>/dev/null)
fi

# 2. speed: ours against the official DPS loop, on the FFHQ-256 network with random weights
ref_cmd="python3 $ROOT/scripts/reference_dps.py --repo $REFERENCE --steps ${STEPS_BENCH:-20} --batch 1 \
--device $DEVICE --out $WORK/bench/reference_dps.json ${BENCH_CONFIG:+--model-config $BENCH_CONFIG}"
[ -d "$REFERENCE/guided_diffusion" ] || { say "no reference clone at $REFERENCE: the bench runs without it"; ref_cmd=""; }
tables_reserve=150
part tables || tables_reserve=0
part bench && stage bench $((BENCH_S + 10)) $tables_reserve env BUDGET_S="$BENCH_S" SKIP="${BENCH_SKIP:-}" \
    STEPS="${STEPS_BENCH:-20}" DEVICE="$DEVICE" CONFIG="${BENCH_CONFIG:-ffhq256}" \
    MODEL="${BENCH_MODEL-${NEW:-faces64}}" REFERENCE_CMD="$ref_cmd" bash "$ROOT/scripts/gpu_bench.sh" "$WORK/bench"
part bench && (cd "$WORK" && tar czf "$OUT/bench.tar.gz" bench bench.log 2>/dev/null)

# 3. the report's tables 1-3 at STEPS steps on CelebA validation faces
part tables && stage reproduce 600 10 "${DP[@]}" reproduce --data "$DATA/celeba-val" --limit "$IMAGES" --steps "$STEPS" \
    --solvers report --batch 100 --model "${NEW:-faces64}" --device "$DEVICE" --no-progress --out "$WORK/reproduce"
part tables && (cd "$WORK" && tar czf "$OUT/reproduce.tar.gz" --exclude='*/images/*' reproduce reproduce.log 2>/dev/null)
say "finished; OUT holds: $(cd "$OUT" && ls | tr '\n' ' ')"
