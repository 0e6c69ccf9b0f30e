#!/usr/bin/env bash
# Issue 24's GPU measurements on a bare GPU machine (an H200 lent through the device tool), in one call.
#
# Before (here, once): bash benchmarks/gpu_prepare.sh   -> .whl/ (52 MB) and .gpu_assets/ (4.4 MB), git-ignored.
# The call (repo root there), carrying both folders (about 61 MiB with the tree, under the 64 MiB limit):
#   run(command="bash benchmarks/gpu_check.sh", carry=[".whl", ".gpu_assets"], timeout_s=590)
# Results: $OUT/gpu_check.json (every phase, written as it goes), gpu_check.log, nvidia_smi.txt, and the GPU and
# CPU runs' rounds/clients Parquet files (7 files). benchmarks/gpu_check.py says what each phase measures.
set -uo pipefail
cd "$(dirname "$0")/.."
START=$(date +%s)
OUT=${OUT:-/tmp/gpu_check_out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  > /tmp/gpu_check_install.log 2>&1 || { tail -30 /tmp/gpu_check_install.log; exit 1; }
# carried wheels first, then the tokenizer-only MiniLM stub (tests' tiny LLaMA), then the repository
export PYTHONPATH=/tmp/site:$PWD/.gpu_assets/site:$PWD
export PATH=/tmp/site/bin:$PATH
export PYTHONUNBUFFERED=1 RAY_memory_monitor_refresh_ms=0 RAY_USAGE_STATS_ENABLED=0 HF_HUB_OFFLINE=1 \
  TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false DS_BUILD_OPS=0 FEDSPINE_CACHE_DIR=/tmp/fedspine_cache
{ nvidia-smi; python3 --version; nproc; free -g; } > "$OUT/nvidia_smi.txt" 2>&1
echo "installed in $(( $(date +%s) - START ))s"
python3 benchmarks/gpu_check.py --out "$OUT" --deadline $(( START + ${BUDGET_S:-560} ))
