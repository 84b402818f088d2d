#!/usr/bin/env bash
# The CUDA measurements of docs/BENCHMARKS.md ("CUDA: still open") in one command, for a GPU
# machine lent for a few minutes: each step has its own time limit, every JSON is written after
# each part, and a step that fails or runs out of time does not stop the next.
#
#   bash bench/gpu_session.sh                 # on the GPU machine, from the repository root
#   SMOKE=1 bash bench/gpu_session.sh         # the same steps on the CPU with the tiny model
#
# Results go to $OUT (default runs/gpu): machine.txt, bench.log (everything printed) and one JSON
# per benchmark step. The whole run stops after BUDGET seconds (default 450); the later steps get
# whatever time the earlier ones left, compile last. Estimates for one H100/H200, not measured:
# tests 1 min, sd15 2 min, sdxl 3 min, the options 3 min.
#
# A machine with PyTorch but no internet: `bash bench/gpu_wheels.sh` here first, and take the
# .whl/ folder along; they are installed into /tmp/site for this run only.
set -uo pipefail

OUT=${OUT:-runs/gpu}
BUDGET=${BUDGET:-450}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
start=$SECONDS
export PYTHONUNBUFFERED=1

if [ -d .whl ] && compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "error: installing .whl/ failed" >&2; exit 2; }
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

if [ -n "${SMOKE:-}" ]; then
    DEVICE=cpu SD15=tiny SDXL=tiny:128 SIZE_ARGS="--batch 2 --steps 4 --refs 0,1,2" REPEATS=1 XL_REPEATS=1 TEST_MARK="not gpu"
else
    DEVICE=cuda SD15=sd15 SDXL=sdxl SIZE_ARGS="" REPEATS=3 XL_REPEATS=2 TEST_MARK="gpu"
fi

left() { echo $(( BUDGET - (SECONDS - start) )); }

# step NAME LIMIT COMMAND...: run with at most LIMIT seconds (and never past BUDGET), log to bench.log
step() {
    local name=$1 limit=$2
    shift 2
    local remaining
    remaining=$(left)
    (( remaining < limit )) && limit=$remaining
    if (( limit < 20 )); then
        echo "== $name: skipped, ${remaining}s of the budget left" | tee -a "$OUT/bench.log"
        return
    fi
    echo "== $name (limit ${limit}s): $*" | tee -a "$OUT/bench.log"
    timeout --signal=INT --kill-after=15 "$limit" "$@" 2>&1 | tee -a "$OUT/bench.log"
    echo "== $name: exit ${PIPESTATUS[0]} after $((SECONDS - start))s" | tee -a "$OUT/bench.log"
}

{
    date -u +%Y-%m-%dT%H:%M:%SZ
    git rev-parse HEAD 2>/dev/null
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>/dev/null || echo "no nvidia-smi"
    "$PY" -c "import sys, torch, diffusers, transformers; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__)"
} >"$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"

# equivalence first: fp16/bf16 FABRIC on this device (fused = separate, fold ~ mask, close to fp32)
step tests 90 "$PY" -m pytest -q -p no:cacheprovider -m "$TEST_MARK" tests/fabric/test_low_precision.py

B="$PY -m bench.generator --device $DEVICE"
# the targets: SD 1.5 512x512 fp16 2+2 within 1.15x of its FLOP bound; 4+4 memory overhead < 2 GB
step sd15 120 $B --models "$SD15" --parts backends,headroom,syncs,throughput $SIZE_ARGS --repeats $REPEATS --json "$OUT/sd15.json"
step sdxl 180 $B --models "$SDXL" --parts backends,headroom,syncs,throughput $SIZE_ARGS --repeats $XL_REPEATS --json "$OUT/sdxl.json"
# does the fused reference pass (off by default on CUDA) pay there, and what does it cost in memory?
step options 120 $B --models "$SD15" --parts rounds,options --options fold,fuse,channels_last $SIZE_ARGS --repeats $REPEATS \
    --json "$OUT/sd15-options.json"
step sdxl-fuse 90 $B --models "$SDXL" --parts options --options fuse $SIZE_ARGS --repeats $XL_REPEATS --json "$OUT/sdxl-options.json"
step compile 600 $B --models "$SD15" --parts options --options compile $SIZE_ARGS --repeats $REPEATS --json "$OUT/sd15-compile.json"
echo "done in $((SECONDS - start))s; files in $OUT"
