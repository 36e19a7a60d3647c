#!/usr/bin/env bash
# The small-scale reproduction reported in results/README.md, on one GPU, run from the repository root:
#
#   bash sweeps/specs/run_small_scale.sh              # every stage below
#   bash sweeps/specs/run_small_scale.sh sweeps       # only the sweeps (idempotent: finished trials are skipped,
#   bash sweeps/specs/run_small_scale.sh benchmarks   #   interrupted ones resume from their last checkpoint)
#
# 1. sweeps: every spec below with the local executor, several at once (tiny models leave one GPU mostly idle);
# 2. benchmarks: the offline packs and the probes on the best Engram model of the allocation sweep and its
#    iso-parameter MoE twin (rho = 1 at the same budget and seed);
# 3. fits, figures and one report per sweep, from the records alone.
#
# The real-text sweep reads ../shared/data/text/gcide.jsonl.gz (its spec names the path). PYTHON (default python3)
# runs the suite; RESULTS and WORKDIR move the records and the checkpoints.
set -uo pipefail
PYTHON=${PYTHON:-python3}
ENGRAM_LAB="$PYTHON -m engram_lab"
RESULTS=${RESULTS:-results}
WORKDIR=${WORKDIR:-runs}
STAGES=${*:-sweeps benchmarks analysis}

sweep() {  # a sweep that ends with failed trials still has its records; the report says what failed
  $ENGRAM_LAB sweep "sweeps/specs/$1.yaml" --results "$RESULTS" --workdir "$WORKDIR" --no-analysis \
    > "$RESULTS/logs/sweep-$1.log" 2>&1 || echo "sweep $1 ended with trials not completed (see its log)"
}

if [[ " $STAGES " == *" sweeps "* ]]; then
  mkdir -p "$RESULTS/logs"
  # most decisive first: the allocation law on both corpora and the ablations, then memory scaling and placement
  sweep allocation & sweep allocation_text & sweep ablation & wait
  sweep memory_scaling & sweep placement & wait
fi

if [[ " $STAGES " == *" benchmarks "* ]]; then
  read -r ENGRAM_CKPT TWIN_CKPT < <($PYTHON -c "
from analysis.data import memory_and_twin
a, b = memory_and_twin('$RESULTS', 'allocation')
print(a['checkpoint'], b['checkpoint'])") || { echo "no completed Engram/MoE pair in the allocation sweep"; exit 1; }
  for ckpt in "$ENGRAM_CKPT" "$TWIN_CKPT"; do
    $ENGRAM_LAB eval "$ckpt" --results "$RESULTS" \
      --tasks engram_world_knowledge,engram_world_knowledge_cloze,engram_niah_single_512,engram_niah_multiquery_512 \
      --limit 200
    $ENGRAM_LAB eval "$ckpt" --results "$RESULTS" --tasks engram_world_knowledge_cloze,engram_niah_single_512 \
      --memory off --limit 200
  done
  $ENGRAM_LAB probe "$ENGRAM_CKPT" --against "$TWIN_CKPT" --results "$RESULTS"
fi

if [[ " $STAGES " == *" analysis "* ]]; then
  $ENGRAM_LAB figures --results "$RESULTS"
  for s in allocation allocation-text memory-scaling placement ablation; do
    [ -d "$RESULTS/$s" ] && $ENGRAM_LAB report "$s" --results "$RESULTS"
  done
fi
