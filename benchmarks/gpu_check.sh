#!/usr/bin/env bash
# The GPU check of w2sr (issues 11, 19): one prepared script for a CUDA machine with no network, <= 10 minutes.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]        # OUT_DIR defaults to $OUT, else benchmarks/results/gpu
#
# 1. installs what a stock PyTorch GPU image lacks from wheels in .whl/ (bitsandbytes, liger-kernel, trl, accelerate,
#    jsonargparse, datasets, math-verify and their small dependencies; fetch them once with `make gpu-wheels`);
# 2. benchmarks/gpu_throughput.py (issue 19, <= 300 s; W2SR_THROUGHPUT_BUDGET_S=240 sets when the last run may
#    start, W2SR_GPU_TESTS=0 skips step 3): w2sr fit's code path before/after each speed option, a bare
#    transformers + peft + AdamW loop and TRL's SFTTrainer (when its wheels are carried) on QLoRA nf4 / bf16 LoRA of a
#    Qwen2.5-0.5B shape and full fine-tuning of a Qwen2.5-1.5B shape (FSDP on one GPU), fixed-length and packed
#    log-normal mix: tokens/s, target tokens/s, MFU, peak memory -> gpu_throughput.json and gpu_throughput.md (the
#    table, also written into benchmarks/RESULTS.md); W2SR_GPU_FIT=1 adds benchmarks/gpu_fit.py (issue 11's loss and
#    padding-vs-packing runs with the memory estimates);
# 3. every `gpu`-marked test (QLoRA fit + adapter reload, FSDP on one GPU with sharded checkpoint, resume and
#    consolidated export, generate and evaluate on the GPU);
# 4. benchmarks/generate_speed.py: HF-backend generation vs a bare model.generate loop on the same 0.5B-shaped model.
# Each step has its own time limit, so one that hangs cannot eat the others' time. Without a GPU it checks the
# script itself at tiny size (`W2SR_GPU_CHECK_TINY=1` forces that) and says the GPU parts were skipped.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-${OUT:-benchmarks/results/gpu}}
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY=${PYTHON:-python3}
started=$(date +%s)
echo "== $(date -u +%Y-%m-%dT%H:%MZ) bash benchmarks/gpu_check.sh $* (git $(git rev-parse --short HEAD 2>/dev/null || echo ?))" | tee "$OUT_DIR/gpu_check.log"
step() { echo "== [$(( $(date +%s) - started ))s] $*" | tee -a "$OUT_DIR/gpu_check.log"; }

if ls .whl/*.whl >/dev/null 2>&1; then
  step "installing $(ls .whl/*.whl | wc -l) carried wheels"
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/w2sr-site .whl/*.whl \
    && export PYTHONPATH=/tmp/w2sr-site:$PWD${PYTHONPATH:+:$PYTHONPATH}
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
$PY - <<'PY' 2>&1 | tee -a "$OUT_DIR/gpu_check.log"
import importlib, torch
print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name() if torch.cuda.is_available() else "")
for name in ("transformers", "peft", "lightning", "bitsandbytes", "liger_kernel", "trl", "accelerate", "jsonargparse", "datasets",
             "math_verify"):
    try:
        print(name, getattr(importlib.import_module(name), "__version__", "?"))
    except Exception as err:  # noqa: BLE001
        print(name, "MISSING", repr(err)[:120])
PY
if $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() and not __import__('os').environ.get('W2SR_GPU_CHECK_TINY') else 1)"; then
  SHAPE=qwen2.5-0.5b; FIT=(--steps 8 --warmup 2); GEN=(--prompts 64 --batch-size 64 --max-new-tokens 256 --repeats 2)
  DEVICE=cuda; TP=()
else
  step "no CUDA GPU: the GPU parts are skipped; checking the script at tiny size on the CPU"
  SHAPE=tiny; FIT=(--steps 2 --warmup 1 --batch_size 2 --seq_len 256); GEN=(--prompts 4 --batch-size 4 --max-new-tokens 8 --repeats 1)
  DEVICE=cpu; TP=(--tiny --only lora-0.5b:fixed:w2sr-before,lora-0.5b:fixed:bare)
fi
MODEL_DIR=$(mktemp -d /tmp/w2sr-gpu-model.XXXXXX)
trap 'rm -rf "$MODEL_DIR"' EXIT

step "training throughput: w2sr options, bare loop, TRL (${TP[*]:-full})"
TP_BUDGET=${W2SR_THROUGHPUT_BUDGET_S:-240}  # no run starts after it; 480 with W2SR_GPU_TESTS=0 (throughput only)
timeout $((TP_BUDGET + 60)) $PY benchmarks/gpu_throughput.py "${TP[@]}" --budget_s "$TP_BUDGET" --out_dir "$OUT_DIR" \
  > "$OUT_DIR/gpu_throughput.log" 2>&1
echo "exit $?" >> "$OUT_DIR/gpu_throughput.log"
if [ -f "$OUT_DIR/gpu_throughput.json" ]; then
  $PY benchmarks/gpu_throughput.py --table "$OUT_DIR/gpu_throughput.json" > "$OUT_DIR/gpu_throughput.md" \
    && tee -a "$OUT_DIR/gpu_check.log" < "$OUT_DIR/gpu_throughput.md"
  [ "$DEVICE" = cuda ] && $PY - "$OUT_DIR/gpu_throughput.md" <<'PY'
import re, sys
from pathlib import Path
path, table = Path("benchmarks/RESULTS.md"), Path(sys.argv[1]).read_text()
start, end = "<!-- gpu_throughput: begin -->", "<!-- gpu_throughput: end -->"
text = path.read_text()
block = f"{start}\n{table}{end}"
text = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda m: block, text, flags=re.S) if start in text \
    else text + "\n## Training throughput (`benchmarks/gpu_throughput.py`)\n\n" + block + "\n"
path.write_text(text)
PY
fi

if [ -n "${W2SR_GPU_FIT:-}" ]; then
  step "fit throughput and memory per loss ($SHAPE)"
  timeout 240 $PY benchmarks/gpu_fit.py --shape "$SHAPE" "${FIT[@]}" --model_dir "$MODEL_DIR/model" \
    --out "$OUT_DIR/gpu_fit.json" > "$OUT_DIR/gpu_fit.log" 2>&1
  echo "exit $?" >> "$OUT_DIR/gpu_fit.log"; grep '^{' "$OUT_DIR/gpu_fit.log" | tee -a "$OUT_DIR/gpu_check.log"
fi

if [ "${W2SR_GPU_TESTS:-1}" != 0 ]; then
  step "gpu-marked tests"
  timeout 150 $PY -m pytest -q -m gpu -p no:cacheprovider -o addopts="" -rA tests/ > "$OUT_DIR/gpu_tests.log" 2>&1
  echo "exit $?" >> "$OUT_DIR/gpu_tests.log"; grep -v "^DEBUG\|^INFO" "$OUT_DIR/gpu_tests.log" | tail -15 | tee -a "$OUT_DIR/gpu_check.log"
fi

step "generation: HF backend vs bare model.generate"
[ -d "$MODEL_DIR/model" ] || $PY -c "import sys; sys.path[:0] = ['benchmarks', '.']; import gpu_fit; \
gpu_fit.build_model(__import__('pathlib').Path('$MODEL_DIR/model'), gpu_fit.QWEN05 if '$SHAPE' != 'tiny' else gpu_fit.TINY, '$DEVICE')" \
  >> "$OUT_DIR/gpu_generate.log" 2>&1
timeout 90 $PY benchmarks/generate_speed.py --device "$DEVICE" "${GEN[@]}" --models "tiny,$MODEL_DIR/model" \
  --output "$OUT_DIR/gpu_generate.json" > "$OUT_DIR/gpu_generate.log" 2>&1
echo "exit $?" >> "$OUT_DIR/gpu_generate.log"; tail -5 "$OUT_DIR/gpu_generate.log" | tee -a "$OUT_DIR/gpu_check.log"
step "done"
