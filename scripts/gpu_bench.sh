#!/usr/bin/env bash
# The GPU speed benchmark of docs/BENCHMARKS.md: `diffprior bench speed` on the DPS FFHQ-256 ADM UNet
# (random weights: same compute as ffhq_10m.pt, nothing to download), every result as JSON.
#
#   bash scripts/gpu_bench.sh [OUT_DIR]        (default: $OUT, else ./bench-gpu)
#
# Stages, most important first; each has a time limit, and all of them together stay within BUDGET_S
# (default 450 s: well under 9 minutes on an H100, estimate in docs/BENCHMARKS.md). A stage cut short keeps
# the rows it finished (bench speed writes its JSON after every batch size).
#   env            GPU, driver, torch
#   dps-fp32       DPS at batch 1, 8, 16, 32, fp32, eager, with the forward and forward+backward floors
#   dps-bf16       the same with bf16 autocast
#   reference      $REFERENCE_CMD, when set: a command timing another implementation on this GPU
#   compare        the same seed in fp32 and bf16: PSNR between the results (on $MODEL too when it is set)
#   others-*       SDEdit, ScoreALD and unconditional sampling at batch 32, fp32 and bf16
#   dps-bf16-best  bf16 + channels_last + cudnn.benchmark at batch 8 and 32
#   compile-*      DPS with torch.compile, bf16 then fp32, batch 1 and 32 first (compilation takes minutes)
#   summary        summary.md: one table of every JSON
# Settings: STEPS (timed steps, default 20), WARMUP (3), BUDGET_S, SKIP (stage names not to run, e.g. those an
# earlier loan measured), MODEL (a checkpoint for the bf16 check),
# REFERENCE_IMAGE (its clean image), REFERENCE_CMD; CONFIG (ffhq256) and DEVICE (cuda) for a dry run elsewhere.
# Needs torch with CUDA and diffprior's dependencies (numpy, safetensors, pillow, pyyaml, tqdm).
set -u
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT_DIR="${1:-${OUT:-bench-gpu}}"
STEPS="${STEPS:-20}"
WARMUP="${WARMUP:-3}"
BUDGET_S="${BUDGET_S:-450}"
CONFIG="${CONFIG:-ffhq256}"
DEVICE="${DEVICE:-cuda}"
mkdir -p "$OUT_DIR"
export OUT_DIR
LOG="$OUT_DIR/log.txt"
START=$(date +%s)
DP=(env "PYTHONPATH=$ROOT/src${PYTHONPATH:+:$PYTHONPATH}" python -c
    'import sys; from diffprior.cli import main; sys.exit(main(sys.argv[1:]))')
SPEED=(bench speed --random-weights --config "$CONFIG" --steps "$STEPS" --warmup "$WARMUP" --device "$DEVICE")

stage() {  # stage NAME LIMIT_S COMMAND...: run within the limit and the remaining budget, log to NAME.log
    local name=$1 limit=$2 left
    shift 2
    if [[ " ${SKIP:-} " == *" $name "* ]]; then
        echo "skip  $name: in SKIP" | tee -a "$LOG"
        return
    fi
    left=$((BUDGET_S - ($(date +%s) - START)))
    if ((left < 20)); then
        echo "skip  $name: the budget is spent" | tee -a "$LOG"
        return
    fi
    ((limit > left)) && limit=$left
    echo "start $name (limit ${limit}s, $(($(date +%s) - START))s elapsed)" | tee -a "$LOG"
    local t0=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" >"$OUT_DIR/$name.log" 2>&1
    local rc=$?
    echo "done  $name: exit $rc after $(($(date +%s) - t0))s" | tee -a "$LOG"
    tail -n 12 "$OUT_DIR/$name.log"
}

"${DP[@]}" --version >/dev/null 2>&1 || { echo "diffprior does not import: install torch (CUDA) and its dependencies"; exit 1; }

stage env 30 bash -c 'nvidia-smi; python -c "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.is_available() and torch.cuda.get_device_name())"'
stage dps-fp32 120 "${DP[@]}" "${SPEED[@]}" --method dps --batch 1,8,16,32 --dtype fp32 --out "$OUT_DIR/dps_fp32.json"
stage dps-bf16 120 "${DP[@]}" "${SPEED[@]}" --method dps --batch 1,8,16,32 --dtype bf16 --out "$OUT_DIR/dps_bf16.json"
if [ -n "${REFERENCE_CMD:-}" ]; then
    stage reference 60 bash -c "$REFERENCE_CMD"
fi
stage compare 60 "${DP[@]}" "${SPEED[@]}" --method dps --batch 4 --compare-fp32 --compare-steps 100 \
    --out "$OUT_DIR/compare_random.json"
if [ -n "${MODEL:-}" ]; then
    for task in box-inpaint gaussian-blur; do
        stage "compare-model-$task" 90 "${DP[@]}" bench speed --model "$MODEL" --method dps --task "$task" --batch 4 \
            --steps 1000 --compare-fp32 --device "$DEVICE" ${REFERENCE_IMAGE:+--reference "$REFERENCE_IMAGE"} \
            --out "$OUT_DIR/compare_model_$task.json"
    done
fi
stage others-fp32 60 "${DP[@]}" "${SPEED[@]}" --method sdedit,scoreald,sample --batch 32 --dtype fp32 \
    --out "$OUT_DIR/others_fp32.json"
stage others-bf16 60 "${DP[@]}" "${SPEED[@]}" --method sdedit,scoreald,sample --batch 32 --dtype bf16 \
    --out "$OUT_DIR/others_bf16.json"
stage dps-bf16-best 60 "${DP[@]}" "${SPEED[@]}" --method dps --batch 8,32 --dtype bf16 --channels-last --cudnn-benchmark \
    --out "$OUT_DIR/dps_bf16_best.json"
# compilation dominates these (one graph per batch size); the order puts the batch sizes that matter first
stage compile-bf16 200 "${DP[@]}" "${SPEED[@]}" --method dps --batch 1,32,8,16 --dtype bf16 --compile --forward-reps 0 \
    --out "$OUT_DIR/dps_bf16_compile.json"
stage compile-fp32 200 "${DP[@]}" "${SPEED[@]}" --method dps --batch 1,32,8,16 --dtype fp32 --compile --forward-reps 0 \
    --out "$OUT_DIR/dps_fp32_compile.json"

python - "$OUT_DIR" <<'EOF' | tee "$OUT_DIR/summary.md"
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
print("| file | method | batch | dtype | compile | ms/step/img | s per 1000-step image | fwd ms/img | fwd+bwd ms/img | peak GiB |")
print("|---|---|---|---|---|---|---|---|---|---|")
for f in sorted(out.glob("*.json")):
    doc = json.loads(f.read_text())
    s = doc.get("settings", {})
    for r in doc.get("runs", []):
        if "error" in r:
            print(f"| {f.name} | {r['method']} | {r['batch']} | {s.get('dtype')} | {s.get('compile')} | {r['error']} | | | | |")
            continue
        print(f"| {f.name} | {r['method']} | {r['batch']} | {s.get('dtype')} | {s.get('compile')} | "
              f"{r['ms_per_step_per_image']:.2f} | {r['seconds_per_1000_step_image']:.2f} | "
              f"{r.get('forward_ms_per_image', '-')} | {r.get('forward_backward_ms_per_image', '-')} | "
              f"{r['peak_memory_bytes'] / 2 ** 30:.2f} |")
    for c in doc.get("comparisons", []):
        print(f"| {f.name} | {c['method']} | {c['batch']} | bf16 vs fp32 | | PSNR {c['psnr_between_db']} dB "
              f"({c['steps']} steps) | {c.get('psnr_vs_reference_db', '')} | | | |")
    if "ms_per_step" in doc and "runs" not in doc:  # a reference implementation's timing
        print(f"| {f.name} | reference | {doc.get('batch')} | | | {doc.get('ms_per_step_per_image')} | "
              f"{doc.get('seconds_per_1000_step_image')} | | | |")
EOF
echo "total $(($(date +%s) - START))s; results in $OUT_DIR" | tee -a "$LOG"
