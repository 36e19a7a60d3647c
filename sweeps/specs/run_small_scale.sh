#!/usr/bin/env bash
# The small-scale reproduction reported in results/README.md, on one GPU, run from the repository root:
#
#   bash sweeps/specs/run_small_scale.sh                       # every stage below
#   bash sweeps/specs/run_small_scale.sh sweeps                # only the sweeps (idempotent: finished trials are
#   bash sweeps/specs/run_small_scale.sh benchmarks            #   skipped, interrupted ones resume from their last
#   bash sweeps/specs/run_small_scale.sh allocation ablation   #   checkpoint); or the named specs, all at once
#
# 1. sweeps: every spec below with the local executor, several at once (tiny models leave one GPU mostly idle);
# 2. benchmarks: the offline packs and the probes on the best Engram model of the allocation sweep and its
#    iso-parameter MoE twin (rho = 1 at the same budget and seed; trained again from their run records where the
#    sweep ran on another machine): world knowledge (letter and cloze formats, all entities and the 100 most
#    mentioned), NIAH and variable tracking at 512 tokens (RULER's and the corpus's own needles), BBH zero-shot
#    (20 questions per task, answers cut at 32 tokens); knowledge and needles again with the Engram model's output off;
# 3. fits, figures and one report per sweep and one per corpus (results/_combined/), from the records alone.
#
# The real-text sweeps (*_text.yaml) read ../shared/data/text/gcide.jsonl.gz (their specs name the path).
# PYTHON (default python3) runs the suite; RESULTS and WORKDIR move the records and the checkpoints.
set -uo pipefail
PYTHON=${PYTHON:-python3}
ENGRAM_LAB="$PYTHON -m engram_lab"
RESULTS=${RESULTS:-results}
WORKDIR=${WORKDIR:-runs}
STAGES=${*:-sweeps benchmarks analysis}
SPECS=" $(cd sweeps/specs && ls *.yaml | sed 's/\.yaml$//' | tr '\n' ' ') "
for stage in $STAGES; do
  [[ " sweeps benchmarks analysis $SPECS " == *" $stage "* ]] || { echo "unknown stage or spec: $stage"; exit 2; }
done

sweep() {  # a sweep that ends with failed trials still has its records; a rerun submits them again
  mkdir -p "$RESULTS/logs"
  $ENGRAM_LAB sweep "sweeps/specs/$1.yaml" --results "$RESULTS" --workdir "$WORKDIR" --no-analysis --retry-failed \
    > "$RESULTS/logs/sweep-$1.log" 2>&1 || echo "sweep $1 ended with trials not completed (see its log)"
}

if [[ " $STAGES " == *" sweeps "* ]]; then
  # most decisive first; each wave keeps under ~22 trials at once (each holds ~3 GB of an 80 GB GPU)
  sweep allocation & sweep allocation_text & wait
  sweep ablation & sweep memory_scaling & sweep memory_scaling_text & wait
  sweep placement & sweep placement_text & wait
  sweep ablation_text
fi
named=()
for stage in $STAGES; do
  [[ "$SPECS" == *" $stage "* ]] && named+=("$stage")
done
for spec in "${named[@]}"; do sweep "$spec" & done
wait

if [[ " $STAGES " == *" benchmarks "* ]]; then
  # the pair's models, trained again (both at once) from their records where the sweep ran on another machine
  mkdir -p "$RESULTS/logs" "$WORKDIR"
  $PYTHON -c "
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from analysis.data import memory_and_twin
from experiments.train import model_of
pair = memory_and_twin('$RESULTS', 'allocation')
with ProcessPoolExecutor(2, mp_context=get_context('spawn')) as pool:
    Path('$WORKDIR/benchmark-pair').write_text(' '.join(pool.map(model_of, pair, ['$WORKDIR'] * 2)))" \
    > "$RESULTS/logs/benchmark-pair.log" 2>&1 || { echo "no Engram/MoE model pair: $RESULTS/logs/benchmark-pair.log"; exit 1; }
  read -r ENGRAM_CKPT TWIN_CKPT < "$WORKDIR/benchmark-pair"
  knowledge=engram_world_knowledge_cloze,engram_world_knowledge_cloze_top100
  niah=engram_niah_single_512,engram_niah_multikey_512,engram_niah_multiquery_512,engram_vt_512,engram_needle_512
  for ckpt in "$ENGRAM_CKPT" "$TWIN_CKPT"; do  # the two models at once; the twin has no memory to switch off
    $ENGRAM_LAB eval "$ckpt" --results "$RESULTS" --limit 200 --tasks engram_world_knowledge,$knowledge,$niah &
  done
  $ENGRAM_LAB eval "$ENGRAM_CKPT" --results "$RESULTS" --limit 200 --memory off \
    --tasks $knowledge,engram_niah_single_512,engram_needle_512
  wait
  $ENGRAM_LAB probe "$ENGRAM_CKPT" --against "$TWIN_CKPT" --results "$RESULTS"
  for ckpt in "$ENGRAM_CKPT" "$TWIN_CKPT"; do
    $ENGRAM_LAB eval "$ckpt" --results "$RESULTS" --limit 20 --max-gen-toks 32 --tasks engram_bbh_zeroshot &
  done
  wait
fi

if [[ " $STAGES " == *" analysis "* ]]; then
  $ENGRAM_LAB figures --results "$RESULTS"
  for corpus in "" -text; do  # a report per sweep, and one per corpus over all its sweeps: every claim in one table
    pooled=()
    for s in allocation memory-scaling placement ablation; do
      [ -d "$RESULTS/$s$corpus" ] || continue
      pooled+=("$s$corpus")
      $ENGRAM_LAB report "$s$corpus" --results "$RESULTS"
    done
    if [ ${#pooled[@]} -gt 1 ]; then $ENGRAM_LAB report "${pooled[@]}" --results "$RESULTS"; fi
  done
fi
