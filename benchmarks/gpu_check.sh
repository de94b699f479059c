#!/usr/bin/env bash
# The GPU checks in one run, for a CUDA machine that cannot reach a package index: most important first, each
# under its own time limit, each step's log under $OUT (default: gpu-check/), a summary line per step.
#
#   make gpu-kit                              # online, beforehand: the wheels a CUDA PyTorch image lacks, in .whl/
#   bash benchmarks/gpu_check.sh [--suite]    # on the GPU machine, in a checkout with .whl/ (and data/real/Test Data)
#
# The wheels go into a scratch folder put first on PYTHONPATH: the machine's own Python is left as it was.
# Steps: bench_gpu.py (every speed figure and its ceiling); tests/test_cuda.py (every path on CUDA against the
# CPU); bench_precision.py --device cuda (AP of fp32 / bf16 / fp16); with --suite, the whole test suite.
set -uo pipefail
py=${PYTHON:-python3}  # the Python that holds torch (on a CUDA image: its python3)
out=${OUT:-gpu-check}
mkdir -p "$out"
if compgen -G ".whl/*.whl" > /dev/null; then
    site=${SAMESPACE_GPU_SITE:-/tmp/samespace-site}
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl \
        || { echo "gpu_check: installing .whl/ failed"; exit 1; }
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
failed=()

step() {  # step NAME SECONDS COMMAND...: run COMMAND under a limit, keep its log, show its end
    local name=$1 limit=$2
    shift 2
    echo "== $name (at most $limit s): $*"
    local start=$SECONDS
    timeout "$limit" "$@" > "$out/$name.log" 2>&1
    local rc=$?
    tail -n 30 "$out/$name.log"
    echo "== $name: exit $rc after $((SECONDS - start)) s"
    [ "$rc" = 0 ] || failed+=("$name")
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "nvidia-smi: not found"
"$py" -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda',
torch.cuda.is_available())"
step bench_gpu 270 "$py" benchmarks/bench_gpu.py
step test_cuda 150 "$py" -m pytest -q -rs -p no:cacheprovider tests/test_cuda.py
real=()
[ -d "data/real/Test Data" ] && real=(--real data/real)
step bench_precision 150 "$py" benchmarks/bench_precision.py --device cuda "${real[@]}"
if [ "${1:-}" = --suite ]; then
    step suite 540 "$py" -m pytest -q -x -p no:cacheprovider
fi
[ ${#failed[@]} = 0 ] && echo "gpu_check: every step passed" || echo "gpu_check: failed: ${failed[*]}"
[ ${#failed[@]} = 0 ]
