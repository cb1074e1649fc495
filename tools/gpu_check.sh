#!/usr/bin/env bash
# One-GPU check, under five minutes: bf16 / SDPA correctness against fp32, then throughput, MFU and peak memory of
# the three ViT-L training steps that matter, each at the largest batch a doubling search fits:
#   1. ViT-L/16 16x224 DiffMAE pretraining        configs/K400/diffmae_vitl.yaml
#   2. ViT-L/16 16x224 fine-tuning                configs/K400/diffmae_vitl_ft.yaml
#   3. ViT-L/14 32x280 fine-tuning, activation    configs/K400/diffmae_vitl14_ft_32x280.yaml MODEL.ACT_CHECKPOINT True
#      checkpointing
# Timings come from `tools/benchmark.py model` (the real Trainer.step, the configs' bf16 autocast; median of rounds);
# correctness from tools/check_precision.py. Each stage's full output goes to $OUT (default output/gpu_check), and a
# summary table ends the run. Exit status: 0 when every stage ran and the precision check passed, 1 otherwise.
#
# Usage:   tools/gpu_check.sh          # on a machine with one GPU
#          tools/gpu_check.sh --dry    # the same stages on the CPU with the tiny demo configs (about a minute):
#                                      # tests the script, not the GPU
# Example: OUT=/tmp/gpu_check tools/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
OUT=${OUT:-output/gpu_check}
DRY=0
case "${1:-}" in
  --dry) DRY=1 ;;
  -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  "") ;;
  *) echo "gpu_check: unknown argument $1 (try --help)" >&2; exit 2 ;;
esac

if [ "$DRY" = 0 ] && ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  msg="gpu_check: no CUDA GPU visible to torch here; run it on a GPU machine"
  echo "$msg (tools/gpu_check.sh --dry tests the script on the CPU)" >&2
  exit 1
fi
mkdir -p "$OUT"
START=$SECONDS
FAILED=()

if [ "$DRY" = 1 ]; then
  # Tiny configs on the CPU; --peak-tflops 1 stands in for a GPU's peak so that the MFU line is exercised too.
  PRECISION_ARGS=(--device cpu --dim 64 --heads 4 --tokens 64 --depth 2 --batch 2)
  BENCH_ARGS=(--device cpu --warmup 1 --repeats 1 --steps 1 --peak-tflops 1 --batch auto --start-batch 1 --max-batch 4)
  PRETRAIN=(configs/demo/diffmae_tiny.yaml)
  FINETUNE=(configs/demo/diffmae_tiny_ft.yaml)
  LONG=(configs/demo/diffmae_tiny_ft.yaml MODEL.ACT_CHECKPOINT True)
  LIMITS=(120 120 120 120)
else
  PRECISION_ARGS=()
  BENCH_ARGS=(--warmup 2 --repeats 3 --steps 3 --batch auto)
  PRETRAIN=(configs/K400/diffmae_vitl.yaml --start-batch 16 --max-batch 1024)
  FINETUNE=(configs/K400/diffmae_vitl_ft.yaml --start-batch 8 --max-batch 512)
  LONG=(configs/K400/diffmae_vitl14_ft_32x280.yaml --start-batch 2 --max-batch 64 --repeats 2 --steps 2
        MODEL.ACT_CHECKPOINT True)
  LIMITS=(45 75 75 100)  # seconds per stage; together under five minutes
fi

# run_stage NAME LIMIT COMMAND...: the command's output to $OUT/NAME.log (and the terminal); a failure is recorded.
run_stage() {
  local name=$1 limit=$2; shift 2
  echo "== $name: $* (limit ${limit} s)"
  timeout "$limit" "$@" 2>&1 | grep -v -e FutureWarning -e 'warnings.warn' | tee "$OUT/$name.log"
  local status=${PIPESTATUS[0]}
  [ "$status" = 0 ] || { FAILED+=("$name (exit $status$([ "$status" = 124 ] && echo ': timed out'))"); }
}

# bench NAME LIMIT CONFIG [OPTIONS and KEY VALUE ...]: tools/benchmark.py model on one config.
bench() {
  local name=$1 limit=$2 cfg=$3; shift 3
  run_stage "$name" "$limit" "$PY" tools/benchmark.py model --cfg "$cfg" "${BENCH_ARGS[@]}" "$@"
}

run_stage precision "${LIMITS[0]}" "$PY" tools/check_precision.py "${PRECISION_ARGS[@]}"
bench pretrain_vitl_16x224 "${LIMITS[1]}" "${PRETRAIN[@]}"
bench finetune_vitl_16x224 "${LIMITS[2]}" "${FINETUNE[@]}"
bench finetune_vitl14_32x280_ckpt "${LIMITS[3]}" "${LONG[@]}"

# value KEY FILE: the first KEY=value of a log ("-" when missing).
value() { local v; v=$(grep -o "^$1=[^ ]*" "$2" 2>/dev/null | head -1 | cut -d= -f2); echo "${v:--}"; }

echo
if [ "$DRY" = 1 ]; then where="DRY RUN on the CPU: not GPU numbers"
else where=$("$PY" -c 'import torch; print(torch.cuda.get_device_name())'); fi
echo "== summary ($where, $((SECONDS - START)) s)"
echo "precision_check=$(value precision_check "$OUT/precision.log")"
printf '%-30s %8s %10s %10s %8s %12s\n' stage batch steps/s clips/s mfu peak_mem_mb
for name in pretrain_vitl_16x224 finetune_vitl_16x224 finetune_vitl14_32x280_ckpt; do
  log="$OUT/$name.log"
  printf '%-30s %8s %10s %10s %8s %12s\n' "$name" "$(value batch "$log")" "$(value steps_per_s "$log")" \
    "$(value clips_per_s "$log")" "$(value mfu "$log")" "$(value peak_mem_mb "$log")"
done
if [ "$(value precision_check "$OUT/precision.log")" != PASS ]; then
  FAILED+=("precision check did not pass")
fi
if [ ${#FAILED[@]} -gt 0 ]; then
  printf 'gpu_check: FAILED: %s\n' "${FAILED[@]}"
  exit 1
fi
echo "gpu_check: OK (logs in $OUT)"
