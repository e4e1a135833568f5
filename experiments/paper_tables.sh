#!/usr/bin/env bash
# The three comparison tables at full protocol, three seeds, on a machine with a CUDA GPU:
#   bash experiments/paper_tables.sh table2|table1|fig6|all [OUT] [LUMBAR_ROOT]
#   table2: +experiment=baselines (7 methods x seeds 1, 2, 3; early stopping on validation Dice)
#           -> OUT/table2 (table2.md, table2.csv, curves/)
#   table1: +experiment=[paper,ablation_sparsity]: the paper's protocol, 500 pretraining epochs per
#           stage (lambda = beta = 0 against matlab_example, seeds 1, 2, 3) -> OUT/table1
#   fig6:   +experiment=sweep_layers, seeds 1, 2, 3 (48 jobs) -> OUT/fig6 (mean and sd heatmaps)
# Each multirun writes its jobs under OUT/runs/<table>; a finished multirun is not rerun (delete
# its folder to redo it). EXTRA="key=value ..." appends overrides to every job. The paper's
# protocol took 7.3 min per run on one H200 (docs/results/gpu), so table1 needs about 45 min and
# fig6 about 6 h there; table2's slice nets take longer per run than PENN.
set -euo pipefail
what=${1:?table2, table1, fig6 or all}
out=${2:-outputs/paper_tables}
root=${3:-${PENN_DATA_ROOT:-../shared/data}/lumbar-vb}
py=${PYTHON:-python}
read -ra extra <<< "${EXTRA:-}"
common=(data=lumbar_vb "data.root=$root" trainer=gpu trainer.enable_progress_bar=false)
multirun() {  # multirun TABLE OVERRIDES...: one Hydra multirun into OUT/runs/TABLE
    local table=$1; shift
    [[ -f "$out/runs/$table/done" ]] && return 0
    "$py" -m penn.run "$@" "${common[@]}" "${extra[@]}" hydra.sweep.dir="$out/runs/$table"
    touch "$out/runs/$table/done"
}
table2() {
    multirun table2 +experiment=baselines
    "$py" experiments/table2.py "$out/runs/table2" --out "$out/table2"
}
table1() {
    multirun table1 '+experiment=[paper,ablation_sparsity]'
    "$py" experiments/table1_ablation.py "$out/runs/table1" --out "$out/table1"
}
fig6() {
    multirun fig6 +experiment=sweep_layers seed=1,2,3
    "$py" experiments/fig6_heatmaps.py "$out/runs/fig6" --out "$out/fig6"
}
mkdir -p "$out"
case $what in
  table2) table2 ;;
  table1) table1 ;;
  fig6) fig6 ;;
  all) table2; table1; fig6 ;;
  *) echo "unknown: $what (table2, table1, fig6 or all)" >&2; exit 2 ;;
esac
