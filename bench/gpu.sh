#!/usr/bin/env bash
# One-GPU benchmark of moeserve against HF transformers (see bench/gpu_bench.py's docstring).
#
#   bash bench/gpu.sh [OUT_DIR] [gpu_bench args...]     e.g.  bash bench/gpu.sh "$OUT" --layers 4
#
# OUT_DIR defaults to $OUT, else bench/out; it receives gpu_bench.json (rewritten after every
# step), gpu_bench.md (the table) and gpu_bench.log (everything printed).
#
# Needs a python ($PYTHON, default python3) whose torch has CUDA, plus transformers (for the
# baseline; without it moeserve is measured alone) and safetensors. The repo's .venv holds a
# CPU-only torch and will NOT do. The repo need not be installed: it runs from the checkout.
#
# The whole run is capped at 470 s of python (then SIGTERM, SIGKILL 10 s later) so that it ends
# inside an 8-minute slot; the script itself stops starting measurements after --budget-s (400).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out_dir="${OUT:-$repo_root/bench/out}"
if [[ $# -gt 0 && "$1" != -* ]]; then
    out_dir="$1"
    shift
fi
mkdir -p "$out_dir"
out_dir="$(cd "$out_dir" && pwd)" # absolute before the cd below, as is $python
log="$out_dir/gpu_bench.log"
python="${PYTHON:-python3}"
if [[ "$python" == */* ]]; then
    python="$(cd "$(dirname "$python")" && pwd)/$(basename "$python")"
fi
# CUDA is required unless the arguments name another device (the CPU smoke test does).
require_cuda=1
previous=""
for arg in "$@"; do
    if [[ "$previous" == --device && "$arg" != cuda* ]] ||
        [[ "$arg" == --device=* && "$arg" != --device=cuda* ]]; then
        require_cuda=0
    fi
    previous="$arg"
done
limit_s="${GPU_BENCH_LIMIT_S:-470}"

stamp() { date '+%H:%M:%S'; }
say() { echo "[$(stamp)] $*" | tee -a "$log"; }
die() {
    say "error: $*" >&2
    exit 2
}

cd "$repo_root"
: >"$log"

command -v "$python" >/dev/null || die "no '$python' on PATH; set PYTHON to a python with CUDA torch"
command -v timeout >/dev/null || die "'timeout' (coreutils) is missing"
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv 2>&1 \
        | tee -a "$log" || true
else
    say "warning: nvidia-smi not found; relying on torch to find the GPU"
fi

export PYTHONPATH="$repo_root${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTORCH_CUDA_ALLOC_CONF="${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}"

say "preflight: $python ($(command -v "$python"))"
REQUIRE_CUDA="$require_cuda" timeout 120 "$python" - <<'EOF' 2>&1 | tee -a "$log" || die "preflight failed (see above)"
import os
import sys

try:
    import torch
except ImportError as exc:
    sys.exit(f"error: this python has no torch ({exc}); set PYTHON to one with CUDA torch")
if os.environ["REQUIRE_CUDA"] == "1" and not torch.cuda.is_available():
    sys.exit(
        f"error: torch {torch.__version__} sees no CUDA device (CPU-only build, e.g. the repo's "
        ".venv, or no GPU); set PYTHON to a python whose torch has CUDA"
    )
try:
    import safetensors  # noqa: F401  (workers.model imports it)
    import workers.bench  # noqa: F401
except ImportError as exc:
    sys.exit(f"error: cannot import moeserve's workers package: {exc}")
try:
    import transformers

    hf = f"transformers {transformers.__version__}"
except Exception as exc:
    hf = f"WARNING: transformers unavailable ({exc}); moeserve will be measured alone"
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
print(f"ok: python {sys.version.split()[0]}, torch {torch.__version__}, {gpu}; {hf}")
EOF

say "running: $python -m bench.gpu_bench --out-dir $out_dir $* (limit ${limit_s} s)"
status=0
timeout -k 10 "$limit_s" "$python" -m bench.gpu_bench --out-dir "$out_dir" "$@" 2>&1 \
    | tee -a "$log" || status=$?
case "$status" in
    0) say "done: $out_dir/gpu_bench.json, $out_dir/gpu_bench.md" ;;
    1) say "finished with errors (listed in the table and JSON); partial results in $out_dir" ;;
    124 | 137) say "TIMED OUT after ${limit_s} s; partial results in $out_dir/gpu_bench.json" ;;
    *) say "FAILED with exit status $status; see $log and $out_dir/gpu_bench.json" ;;
esac
exit "$status"
