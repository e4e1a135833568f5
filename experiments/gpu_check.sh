#!/usr/bin/env bash
# The GPU figures in one go, on a machine with a CUDA GPU:
#   1. the tests that need CUDA (CUDA-graph training steps, GPU copy-back of dense maps);
#   2. experiments/gpu_step_probe.py: one training step eager, as a CUDA graph, and through
#      penn's StepGroup (data.loader.steps_per_batch);
#   3. experiments/bench.py on the GPU (BENCH_SECTIONS, default the slice section: slices/s in
#      batches and in scan-like stacks, float32 and bfloat16);
#   4. the paper protocol (+experiment=paper: patches cut on the GPU, 32 steps per CUDA graph) on
#      lumbar-vb with PRETRAIN_EPOCHS pretraining epochs per stage (500: the whole protocol),
#      and its projection to 500 from the fit times (experiments/protocol_time.py);
#   5. optionally (HOST_TIMEOUT > 0) the same with the patches cut on the host, for the ratio.
#   bash experiments/gpu_check.sh OUT [LUMBAR_ROOT] [PRETRAIN_EPOCHS]
# Each step is capped (TEST_TIMEOUT, PROBE_TIMEOUT, BENCH_TIMEOUT, PAPER_TIMEOUT, HOST_TIMEOUT
# seconds) so that one slow step cannot take the others' time; with DEADLINE (seconds since
# the epoch) no step runs past it. Everything lands in OUT.
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
    if [ -n "${DEADLINE:-}" ] && [ $((DEADLINE - $(date +%s))) -lt "$limit" ]; then
        limit=$((DEADLINE - $(date +%s)))
    fi
    [ "$limit" -gt 0 ] || return 0
    timeout "$limit" "$@" > "$out/$name.log" 2>&1
    echo "$name: exit $?, $((SECONDS - start)) s" | tee -a "$out/steps.txt"
}
paper() {  # paper NAME TIMEOUT OVERRIDES...: the paper protocol and its projection
    local name=$1 limit=$2 start=$SECONDS; shift 2
    [ "$limit" -gt 0 ] || return 0
    step "$name" "$limit" "$py" -m penn.run +experiment=paper data=lumbar_vb data.root="$root" \
        model.pretrain.epochs="$epochs" trainer.enable_progress_bar=false "$@" \
        hydra.run.dir="$out/$name"
    cp "$out/$name/run.log" "$out/${name}_run.log" 2>/dev/null
    cp "$out/$name/metrics.json" "$out/${name}_metrics.json" 2>/dev/null
    "$py" experiments/protocol_time.py "$out/$name" --pretrain-epochs 500 \
        --wall-s $((SECONDS - start)) > "$out/${name}_projection.txt" 2>&1
}
step tests "${TEST_TIMEOUT:-120}" "$py" -m pytest -q -p no:cacheprovider tests/lit/test_finetune.py \
    tests/inference/test_dense.py -k "cuda or gpu"
step step_probe "${PROBE_TIMEOUT:-60}" "$py" experiments/gpu_step_probe.py
step bench_gpu "${BENCH_TIMEOUT:-240}" "$py" experiments/bench.py \
    "sections=[${BENCH_SECTIONS:-slice}]" 'train_overrides=[trainer=gpu]' \
    out="$out/bench_gpu.json" ${BENCH_ARGS:-}
paper paper "${PAPER_TIMEOUT:-180}" ${PAPER_ARGS:-}
paper paper_host_patches "${HOST_TIMEOUT:-0}" data.loader.on_device=false \
    data.loader.steps_per_batch=1 model.finetune.epochs=1 ${PAPER_ARGS:-}
