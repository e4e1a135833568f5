#!/usr/bin/env bash
# The CPU rows of Table 2 and the CPU Table 1 on lumbar-vb (docs/results.md), on 2 cores:
#   bash experiments/table2_cpu.sh table2|table1 [OUT]
#   table2: +experiment=baselines (1.5 mm grid, whole-slice augmentation, early stopping on
#           validation Dice, best-Dice checkpoint) as single runs: UNet and D-TVNet at half width
#           (seed 1, at most 30 epochs), PENN (seeds 1, 2, 3, at most 20 epochs); then
#           python experiments/table2.py OUT/table2 --out docs/results/table2_cpu
#   table1: +experiment=ablation_sparsity on the same data path and stopping rule, 30 pretraining
#           epochs per stage, one multirun per seed (1, 2, 3); then
#           python experiments/table1_ablation.py OUT/table1 --out docs/results/table1_cpu
# Finished runs are skipped, so the script resumes. MultiResUNet, SAU-Net, OP-convNet and
# seg_unet need a GPU at this protocol (experiments/paper_tables.sh).
set -euo pipefail
what=${1:?table2 or table1}
out=${2:-outputs/cpu_tables}
py=${PYTHON:-.venv/bin/python}
common=(data=lumbar_vb trainer.enable_progress_bar=false)
run() {  # run NAME OVERRIDES...: one +experiment=baselines job into OUT/table2/NAME
    local name=$1; shift
    [[ -f "$out/table2/$name/metrics.json" ]] && return 0
    "$py" -m penn.run +experiment=baselines hydra.mode=RUN "${common[@]}" "$@" \
        hydra.run.dir="$out/table2/$name"
}
case $what in
  table2)
    run unet_s1 model=unet model.net.base_channels=16 seed=1 model.finetune.epochs=30
    run dtvnet_s1 model=dtvnet model.net.base_channels=16 model.net.aux_channels=8 seed=1 \
        model.finetune.epochs=30
    for s in 1 2 3; do run "penn_s$s" model=penn seed=$s model.finetune.epochs=20; done
    ;;
  table1)
    for s in 1 2 3; do
        [[ -f "$out/table1/seed$s/done" ]] && continue
        "$py" -m penn.run +experiment=ablation_sparsity "${common[@]}" seed=$s \
            data.preprocess.spacing=1.5 data.preprocess.smooth_sigma=0.0 \
            model.pretrain.epochs=30 model.finetune.epochs=20 callbacks.early_stopping.patience=4 \
            callbacks.checkpoint.monitor=val/patch/dice callbacks.checkpoint.mode=max \
            hydra.sweep.dir="$out/table1/seed$s"
        touch "$out/table1/seed$s/done"
    done
    ;;
  *) echo "unknown: $what (table2 or table1)" >&2; exit 2 ;;
esac
