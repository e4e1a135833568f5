#!/usr/bin/env bash
# The short CPU-budget runs on ../shared/data/lumbar-vb behind docs/results/lumbar_cpu:
#   bash experiments/lumbar_cpu.sh grid|lesions [OUT]
# (grid = the Fig. 6 sweep; lesions = the five baselines, three classes, on data=lumbar_vb_lesions;
# finished runs are skipped, so the script resumes). Table 2 and Table 1: table2_cpu.sh.
# EXTRA="key=value ..." appends overrides to every run (e.g. EXTRA="trainer=gpu data.root=DIR").
# Every method gets the same data, split (seed 42), preprocessing, calibration and metrics; the
# budgets are cut to fit 2 CPU cores (see docs/results.md), not the paper's.
set -euo pipefail
what=${1:?grid or lesions}
out=${2:-outputs/lumbar_cpu}
py=${PYTHON:-.venv/bin/python}
read -ra extra <<< "${EXTRA:-}"
common=(data=lumbar_vb data.patches.stride=16 inference.stride=8 trainer.enable_progress_bar=false
        # the read-out and calibration these tables were measured with (defaults until 2026-11-26)
        inference.aggregate=mean inference.calibration.high=0.95 'inference.calibration.min_sizes=[]')
# the 16-point grid: 3 fine-tuning epochs, 5,000 validation patches per epoch
sweep_budget=(model.pretrain.epochs=1 model.finetune.epochs=3 data.loader.max_eval_patches=5000)
# pixel-wise nets: half widths, 128^2 crops, 8 epochs x 20 batches of 8 (160 steps), 2 validations
slice_budget=(model.slices.crop=128 model.finetune.epochs=8 trainer.limit_train_batches=20
              trainer.check_val_every_n_epoch=4)
run() { local name=$1; shift; [[ -f "$out/$name/metrics.json" ]] && return 0  # done already
        rm -rf "${out:?}/$name"; local start=$SECONDS
        "$py" -m penn.run "${common[@]}" "$@" "${extra[@]}" hydra.run.dir="$out/$name"
        echo "$name $((SECONDS - start)) s${EXTRA:+ ($EXTRA)}" >> "$out/times.txt"; }
mkdir -p "$out"
case $what in
  grid)
    /usr/bin/time -f "grid %e s" -a -o "$out/times.txt" "$py" -m penn.run +experiment=sweep_layers \
        "${common[@]}" "${sweep_budget[@]}" hydra.sweep.dir="$out/grid"
    ;;
  lesions)  # other / vertebra / tumour; new training lesions every epoch, fixed ones for val/test
    common=(data=lumbar_vb_lesions "${common[@]:1}")
    run unet_lesions model=unet model.net.base_channels=16 "${slice_budget[@]}"
    run dtvnet_lesions model=dtvnet model.net.base_channels=16 model.net.aux_channels=8 \
        "${slice_budget[@]}"
    run opconvnet_lesions model=opconvnet model.finetune.epochs=2 inference.stride=16
    run multiresunet_lesions model=multiresunet model.net.base_channels=16 "${slice_budget[@]}"
    run sau_net_lesions model=sau_net model.net.stem_channels=16 model.net.growth=8 \
        model.net.decoder_channels=32 model.net.feature_channels=16 "${slice_budget[@]}"
    ;;
  *) echo "unknown: $what" >&2; exit 2 ;;
esac
