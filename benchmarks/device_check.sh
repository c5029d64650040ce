#!/usr/bin/env bash
# The CUDA checks and GPU timings, run on a lent GPU machine (the `device` tool), in one call.
# The real models and data travel in parts (a call carries at most 64 MiB): `stage` copies the part
# carried in .gpu*/ to /root/stage; `run` adds the last part, unpacks, installs what the machine's
# image lacks (hnswlib from source, gguf) and runs: the CUDA tests, then cost.py in float32 and
# bfloat16, then (time allowing) the zsRE T=1000 editing run. Everything lands in $OUT.
set -uo pipefail
stage=/root/stage
mkdir -p "$stage"
cp .gpu*/part.* "$stage"/ 2>/dev/null
[ "${1:-}" = stage ] && { ls -la "$stage"; exit 0; }
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
python3 -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/site .gpu*/hnswlib-*.tar.gz .gpu*/gguf-*.whl \
  2>&1 | tail -3
mkdir -p "$stage/x" && cat "$stage"/part.* | tar -xz -C "$stage/x" || exit 1
export PYTHONPATH="/tmp/site:$stage/x/site:$PWD" MELO_MODELS="$stage/x/models" MELO_SHARED="$stage/x/shared"
nvidia-smi --query-gpu=name,memory.used,clocks.sm --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers, hnswlib, gguf; print('torch', torch.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name(0))" | tee -a "$OUT/gpu.txt"
python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$OUT/pytest-cuda.log" | tail -15
for dtype in float32 bfloat16; do
  python3 benchmarks/cost.py --model smollm2 --n 100 --device cuda --dtype "$dtype" --threads 4 \
    --tag "smollm2-counterfact-n100-cuda-$dtype" --out "$OUT" 2>&1 | tail -4
done
timeout "${EDITING_LIMIT:-240}" python3 benchmarks/editing.py --model smollm2 --dataset zsre --n 1000 --editors melo \
  --device cuda --threads 4 --tag smollm2-zsre-n1000-cuda --out "$OUT" 2>&1 | tail -5
ls -la "$OUT"
