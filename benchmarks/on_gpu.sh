#!/usr/bin/env bash
# The GPU runs behind results/README.md's 2026-12-03 entries, for an offline GPU machine that receives a copy of the
# repository: Python wheels it lacks in .whl/ (optuna alembic sqlalchemy colorlog mako submitit cloudpickle filelock
# pytest pluggy iniconfig packaging pygments, for its Python), the ladder's text in .data/english and .data/heldout
# (copied to ../corpora, where the spec reads it); records are written under runs/ and packed into $OUT.
#
#   bash benchmarks/on_gpu.sh check              # compiled steps and trials against eager ones, and gradient
#                                                #   clipping's GPU path (pytest), then
#                                                #   a compiled trial's loss against an eager one's; where the
#                                                #   steps differ, bench compiled_grads bisects the compile
#   bash benchmarks/on_gpu.sh bench NAME [ARGS]  # benchmarks/NAME.py (compiled_grads, trainer_paths, batched_seeds,
#                                                #   profile_step, sweep_throughput, ...) and its JSON result
#   bash benchmarks/on_gpu.sh ladder SECONDS [N] # the allocation ladder, resumed, for at most SECONDS (N jobs at
#                                                #   once, default the spec's): compiled into CUDA graphs when a
#                                                #   check passed on this machine, else eager; failed trials are
#                                                #   retried unless RETRY_FAILED=0 (then only trials never run)
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
  check)
    rm -f runs/compiled-steps-ok
    if python3 -m pytest -q -p no:cacheprovider tests/engram/test_compiled_training.py tests/engram/test_grad_clip.py \
         tests/experiments/test_train.py -k "plain_eager or compiled_steps or clip_grad_norm" 2>&1 \
         | tee "$OUT/check.log"; then
      # steps at shared parameters are not training (with fixed shapes the Inductor case passed where compiled
      # trials stalled): a trial compiled into CUDA graphs must also end within 2% of an eager one's loss
      python3 benchmarks/trainer_paths.py --fresh --paths eager cuda-graphs --within 0.02 2>&1 \
        | grep --line-buffered -v -i "warn" | tee "$OUT/trainer_paths.log" \
        && mkdir -p runs && touch runs/compiled-steps-ok
      cp results/benchmarks/trainer_paths.json "$OUT/"
    else  # where the compiled gradients leave the eager ones: by the compile's memory reuse and the allocator's
          # state (at fixed parameters, the compiled function's own state: bench compiled_grads ... --frozen)
      python3 benchmarks/compiled_grads.py --backends inductor inductor-no-reuse inductor-no-donation cudagraphs \
        --memory plain poisoned 2>&1 | grep --line-buffered -v -i "warn" | tee "$OUT/compiled_grads.log"
      cp results/benchmarks/compiled_grads.json "$OUT/"
    fi ;;
  bench)
    name=${2:?bench NAME}
    python3 "benchmarks/$name.py" "${@:3}" 2>&1 | grep --line-buffered -v -i "warn\|srun\|litlogger" \
      | tee "$OUT/$name.log"
    cp "results/benchmarks/$name.json" "$OUT/" ;;
  ladder)
    if [ ! -d runs/gpu-results/allocation-ladder ] && [ -d results/allocation-ladder/runs ]; then
      mkdir -p runs/gpu-results/allocation-ladder  # resume from the committed records, not from scratch
      cp -r results/allocation-ladder/runs runs/gpu-results/allocation-ladder/
    fi
    # to a file, not a pipe: trial jobs inherit the driver's output and outlive its --timeout, and a reader of the
    # pipe would wait for them all
    how=()  # trials are the same trials compiled or not (their run ids say so); only a passed check switches
    [ -f runs/compiled-steps-ok ] && how=(--compile cudagraphs) && echo "ladder: compiled into CUDA graphs"
    [ -n "${3:-}" ] && how+=(--max-parallel "$3")
    [ "${RETRY_FAILED:-1}" = 1 ] && how+=(--retry-failed)
    python3 -m engram_lab sweep sweeps/specs/allocation_ladder.yaml --results runs/gpu-results --workdir runs \
      --no-analysis --timeout "${2:-500}" "${how[@]}" >> "$OUT/ladder.log" 2>&1
    pkill -9 -f submitit  # jobs ignore SIGTERM (as on SLURM) and would train on; a later driver resumes them
    grep -a -v "Epoch\|Training\|Validation" "$OUT/ladder.log" | tail -n 40
    tar czf "$OUT/ladder-records.tgz" -C runs/gpu-results . ;;
  *) echo "usage: $0 check | bench NAME [ARGS] | ladder SECONDS [N]"; exit 2 ;;
esac
