#!/usr/bin/env bash
# The GPU runs behind results/README.md's 2026-12-03 entry, for an offline GPU machine that receives a copy of the
# repository: Python wheels it lacks in .whl/, the ladder's text in .data/english and .data/heldout (copied to
# ../corpora, where the spec reads it); records are written under runs/ and copied to $OUT (default runs/gpu).
#
#   bash benchmarks/on_gpu.sh profile            # benchmarks/profile_step.py
#   bash benchmarks/on_gpu.sh ladder SECONDS      # the allocation ladder, resumed, for at most SECONDS
set -uo pipefail
OUT=${OUT:-runs/gpu}
mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=.:${PYTHONPATH:-} PYTHONUNBUFFERED=1
if [ ! -d ../corpora/english ] && [ -d .data/english ]; then  # the ladder's text (its spec says how it is built)
  mkdir -p ../corpora && cp -r .data/english .data/heldout ../corpora/
fi
case "${1:-}" in
  profile)
    python3 benchmarks/profile_step.py "${@:2}" 2>&1 | grep -v -i "warn\|srun\|litlogger" | tee "$OUT/profile_step.log"
    cp results/benchmarks/profile_step.json "$OUT/" ;;
  ladder)
    python3 -m engram_lab sweep sweeps/specs/allocation_ladder.yaml --results runs/gpu-results --workdir runs \
      --no-analysis --retry-failed --timeout "${2:-500}" 2>&1 | tee -a "$OUT/ladder.log"
    mkdir -p "$OUT/results" && cp -r runs/gpu-results/. "$OUT/results/" ;;
  *) echo "usage: $0 profile | ladder SECONDS"; exit 2 ;;
esac
