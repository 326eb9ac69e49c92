#!/usr/bin/env bash
# One row of a budgeted comparison (docs/BENCHMARKS.md, issue 14 item 2): train a config on one
# pinned core, then measure what it learned the way every row of those tables is measured.
#
#   bench/train_eval.sh NAME CORE [infomax train options...]
#
# A pair run is two of these started together, one core each, so that whatever else the machine
# does touches both rows alike:
#
#   bench/train_eval.sh pb256150 0 --data.init_args.batch_size 256 &
#   bench/train_eval.sh pnp150 1 --model.gamma 0 &
#   wait
#
# Steps: `infomax train` (CONFIG, default training/configs/cifar10-cpu-dim.yaml, its max_time the
# budget; seed 0; at nice -5 with one thread, so that tests run beside it take the leftover), then
# `infomax eval --local` of mu and C(x) with the probe (-> out/eval/NAME.json), then C(x) whitened
# to 256 dimensions, eps 0.01, as models/cifar10 served it until 2026-12-02 and kept so for every row
# to compare (artifacts/NAME-white, -> out/eval/NAME-white.json; bench/whiten_grid.py picks a setting).
# Logs: runs/NAME/train.log and out/eval/NAME*.txt; each step's exit status and time are appended
# to out/eval/progress.log. The table's rows, from these files: `python bench/pair_rows.py
# LABEL=NAME ...`. Environment: CONFIG, DATA (default cifar10), EVAL_ARGS (e.g.
# "--limit-train 500 --limit-test 200" for a smoke run), INFOMAX_DATA_DIR for the data sets.
# nice -5 needs root (or CAP_SYS_NICE); without it the run stays at the normal priority.
set -uo pipefail
# The body is one { ...; exit; } group: bash reads the whole group before running any of it, so an
# edit of this file while a 150-minute run is under way cannot shift what it runs next.
{

if [ $# -lt 2 ]; then
  echo "usage: bench/train_eval.sh NAME CORE [infomax train options...]" >&2
  exit 2
fi
name=$1
core=$2
shift 2
case $core in
  '' | *[!0-9]*)
    echo "bench/train_eval.sh: CORE must be a CPU number (0, 1, ...), got '$core'" >&2
    exit 2
    ;;
esac
config=${CONFIG:-training/configs/cifar10-cpu-dim.yaml}
data=${DATA:-cifar10}
read -r -a eval_args <<< "${EVAL_ARGS:-}"
cd "$(dirname "$0")/.." || exit 1
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
mkdir -p "runs/$name" out/eval
progress=out/eval/progress.log
nice_cmd=(nice -n -5)
nice -n -5 true 2> /dev/null || nice_cmd=()
pin=(taskset -c "$core")

step() { # what, exit status
  echo "$name $1 rc=$2 $(date -u +%FT%TZ)" >> "$progress"
  [ "$2" -eq 0 ] || exit "$2"
}

"${nice_cmd[@]}" "${pin[@]}" infomax train --config "$config" "$@" --seed_everything 0 \
  --trainer.default_root_dir "runs/$name" --export.dirpath "artifacts/$name" > "runs/$name/train.log" 2>&1
step train $?
"${pin[@]}" infomax eval --model "artifacts/$name" --data "$data" --local --no-pixels "${eval_args[@]}" \
  --json "out/eval/$name.json" > "out/eval/$name.txt" 2>&1
step eval $?
"${pin[@]}" infomax export --artifact "artifacts/$name" --out "artifacts/$name-white" --output local \
  --whiten --whiten-dim 256 > "out/eval/$name-white-export.txt" 2>&1
step export-white $?
"${pin[@]}" infomax eval --model "artifacts/$name-white" --data "$data" --no-pixels --no-probe "${eval_args[@]}" \
  --json "out/eval/$name-white.json" > "out/eval/$name-white.txt" 2>&1
step eval-white $?
exit 0
}
