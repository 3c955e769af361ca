#!/usr/bin/env bash
# Everything one short lease of a GPU machine runs, end to end, from the repo root:
#
#   1. the figure1 smoke profile on the GPU: exits at once (status 3) if the package
#      does not run there, before the lease's minutes go into the real work;
#   2. the figure1 study at its `gpu` profile on the full CIFAR-10 copy, stopped
#      cleanly (SIGINT: finished cells are kept) after FIG1_SECONDS;
#   3. the speed modes of the four-layer net and full-width AlexNet (eager modes);
#   4. one tar of every result folder under $OUT, for `python -m bench report` here.
#
# Needs: python3 with torch, torchvision, pandas, seaborn; fvcore and its needs as wheels
# in .gpu/wheels when missing; the data archive at $DATA. A CPU dry run of the same path:
#   FIG1_PROFILE=smoke MEASURE_ARCHS=layers-80sec MEASURE_FLAGS=--quick DEVICE=cpu \
#   DATA=synthetic OUT=/tmp/lease-out bash scripts/gpu_lease.sh
set -u -o pipefail

OUT=${OUT:-/tmp/lease-out}
RUNS=${RUNS:-/tmp/lease-runs}
DATA=${DATA:-.gpu/cifar10-jpeg.tar.gz}
DEVICE=${DEVICE:-auto}
FIG1_PROFILE=${FIG1_PROFILE:-gpu}
FIG1_SECONDS=${FIG1_SECONDS:-380}
MEASURE_SECONDS=${MEASURE_SECONDS:-60}
MEASURE_ARCHS=${MEASURE_ARCHS-layers-80sec alexnet}
MEASURE_MODES=${MEASURE_MODES:-fp32,fp32+cl,bf16,bf16+cl}
MEASURE_FLAGS=${MEASURE_FLAGS-}
export PYTHONUNBUFFERED=1 BENCH_CACHE=${BENCH_CACHE:-/tmp/bench-cache}
mkdir -p "$OUT" "$RUNS/measure"

if compgen -G ".gpu/wheels/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/wheels/*.whl || exit 4
    export PYTHONPATH=/tmp/site
fi

pack() { tar czf "$OUT/lease-results.tar.gz" -C "$RUNS" . ; }
trap pack EXIT

start=$(date +%s)
stamp() { echo "== $(( $(date +%s) - start )) s: $*"; }
{
    stamp "machine"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null || echo "no nvidia-smi"
    python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available() and torch.cuda.get_device_name())"

    stamp "smoke"
    python3 -m bench ablate --study figure1 --profile smoke --device "$DEVICE" --out "$RUNS/smoke" \
        --no-progress --no-report || { echo "smoke failed: nothing else runs"; exit 3; }

    stamp "figure1 $FIG1_PROFILE (stopped after $FIG1_SECONDS s)"
    timeout -s INT -k 30 "$FIG1_SECONDS" python3 -m bench ablate --study figure1 --profile "$FIG1_PROFILE" \
        --data "$DATA" --device "$DEVICE" --out "$RUNS" --no-progress --no-report
    echo "figure1 exit status $?"

    for arch in $MEASURE_ARCHS; do
        stamp "measure $arch"
        # shellcheck disable=SC2086  # MEASURE_FLAGS is a list of flags
        timeout -s INT -k 10 "$MEASURE_SECONDS" python3 -m bench measure --model "$arch" --device "$DEVICE" \
            --modes "$MEASURE_MODES" $MEASURE_FLAGS --out "$RUNS/measure/modes-$arch.csv"
    done
    stamp "done"
} 2>&1 | tee "$RUNS/lease.log"
