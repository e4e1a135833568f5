#!/usr/bin/env bash
# The GPU figures of issue 5 in one go, on a machine with a CUDA GPU:
#   1. experiments/bench.py on the GPU (slices/s at each stride in float32 and bfloat16, whole
#      volumes, the patch stream, Lightning training steps with trainer=gpu);
#   2. the paper protocol (+experiment=paper: patches cut on the GPU) on lumbar-vb with
#      PRETRAIN_EPOCHS pretraining epochs per stage instead of 500, and the projection to 500 from
#      its fit times (experiments/protocol_time.py);
#   3. the same with the patches cut on the host (data.loader.on_device=false), for the ratio.
#   bash experiments/gpu_check.sh OUT [LUMBAR_ROOT] [PRETRAIN_EPOCHS]
# Each step is capped (BENCH_TIMEOUT, PAPER_TIMEOUT, HOST_TIMEOUT seconds) so that one slow step
# cannot take the others' time; everything lands in OUT.
set -uo pipefail
out=${1:?output folder}
root=${2:-../shared/data/lumbar-vb}
epochs=${3:-3}
py=${PYTHON:-python}
mkdir -p "$out"
nvidia-smi > "$out/nvidia-smi.txt" 2>&1
"$py" -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0))" > "$out/torch.txt" 2>&1
step() {  # step NAME TIMEOUT COMMAND...: run it, log its exit status and wall time
    local name=$1 limit=$2 start=$SECONDS; shift 2
    timeout "$limit" "$@" > "$out/$name.log" 2>&1
    echo "$name: exit $?, $((SECONDS - start)) s" | tee -a "$out/steps.txt"
}
paper() {  # paper NAME TIMEOUT OVERRIDES...: the shortened paper protocol and its projection
    local name=$1 limit=$2 start=$SECONDS; shift 2
    step "$name" "$limit" "$py" -m penn.run +experiment=paper data=lumbar_vb data.root="$root" \
        model.pretrain.epochs="$epochs" trainer.enable_progress_bar=false "$@" \
        hydra.run.dir="$out/$name"
    "$py" experiments/protocol_time.py "$out/$name" --pretrain-epochs 500 \
        --wall-s $((SECONDS - start)) > "$out/${name}_projection.txt" 2>&1
}
step bench_gpu "${BENCH_TIMEOUT:-240}" "$py" experiments/bench.py \
    sections=[slice,volume,stream,training] 'train_overrides=[trainer=gpu]' \
    out="$out/bench_gpu.json" ${BENCH_ARGS:-}
paper paper "${PAPER_TIMEOUT:-180}" ${PAPER_ARGS:-}
paper paper_host_patches "${HOST_TIMEOUT:-120}" data.loader.on_device=false \
    model.finetune.epochs=1 ${PAPER_ARGS:-}
