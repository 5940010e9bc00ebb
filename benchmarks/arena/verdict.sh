#!/usr/bin/env bash
# The arena's verdict in one command: every attention arm and its principal ablation, each arm's
# learning rate tuned on validation, 5 seeds (ablations 3, at their full arm's rate), paired tests with
# Holm's correction and the copy-depth breakdown, on text and on code.
#
#   benchmarks/arena/verdict.sh TEXT_FILE [OUT_DIR]            # CPU: ~0.8M parameters (see below)
#   PRESET=paper benchmarks/arena/verdict.sh ENWIK8 [OUT_DIR]  # GPU: ~1M parameters, enwik8, 20k steps
#
# CPU sizing (2 cores, two trainings at once, one torch thread each): per corpus 6 arms x (5 seeds + a
# 5-rate sweep at a quarter budget) + 5 ablations x 3 seeds = 56.5 run-equivalents; the oscillator arms
# run at 0.4-0.9x vanilla's speed. At 2000 steps (text) and 800 steps (code) that is about 4.2 + 1.7
# core-hours from scratch. Finished runs in OUT_DIR are reused: rerun the same command to continue.
# Each corpus writes OUT_DIR/<corpus>/report.md (+ report.json, comparison.png, copy_depth.png).
set -euo pipefail
text=${1:?usage: verdict.sh TEXT_FILE [OUT_DIR]}
out=${2:-outputs/verdict}
jobs=${JOBS:-2}
arms=vanilla,lattice,pma,ssa,torus:qk-mean,fsn:qk-mean
ablations=lattice:no-oscillator,pma:no-oscillator,ssa:no-oscillator,torus:no-coupling,fsn:no-coupling
common=(--arms "$arms,$ablations" --reference vanilla --seed 0 --seeds 5 --ablation-seeds 3 --tune
        --lr-sweep 3e-4,1e-3,3e-3,1e-2,3e-2 --copy-depth --jobs "$jobs")
here=$(cd "$(dirname "$0")/../.." && pwd)
if [[ ${PRESET:-cpu} == paper ]]; then
    lotsim compare "$here/recipes/enwik8_1m.toml" --set "task.path=\"$(realpath "$text")\"" "${common[@]}" \
        --out "$out/enwik8"
    exit
fi
lotsim compare "$here/recipes/arena_char_lm.toml" --set "task.path=\"$(realpath "$text")\"" --steps 2000 \
    "${common[@]}" --out "$out/text"
lotsim compare "$here/recipes/arena_code_lm.toml" --steps 800 "${common[@]}" --out "$out/code"
