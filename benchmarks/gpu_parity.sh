#!/usr/bin/env bash
# One cold GPU session, one command (docs/benchmarks.md, "The GPU parity matrix"): install the carried wheels (.whl/: fla, fla-core, rwkv,
# which the device image lacks), run the parity matrix (benchmarks/gpu_parity.py, <= 6 min with its budget),
# and with FORWARD=1 the forward-throughput benchmark after it (PARITY=0 FORWARD=1: that benchmark alone, as a
# second call: both together can pass the device tool's 10 minutes a call). Results go to $OUT (the device tool's
# folder) or out/gpu: gpu.txt, gpu_parity.{json,md,log}, gpu_parity_workers.log, forward.{json,log}.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-out/gpu}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
if compgen -G '.whl/*.whl' >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
rc=0
if [ "${PARITY:-1}" = 1 ]; then
    python3 benchmarks/gpu_parity.py --out "$out" "$@" 2>&1 | tee "$out/gpu_parity.log"
    rc=${PIPESTATUS[0]}
fi
if [ "${FORWARD:-0}" = 1 ]; then
    # its own warm-up discipline: autotune once, outside the timed region (speed numbers, so real autotuning)
    timeout "${FORWARD_TIMEOUT:-240}" python3 benchmarks/benchmark_forward.py --json "$out/forward.json" 2>&1 | tee "$out/forward.log"
    frc=${PIPESTATUS[0]}
    [ "${PARITY:-1}" = 1 ] || rc=$frc
fi
exit "$rc"
