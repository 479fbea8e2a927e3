#!/usr/bin/env bash
# The GPU checks in one call, for a lent GPU machine with torch but without this project's other packages.
#
#   bash bench/gpu_session.sh DATA_DIR OUT_DIR
#
# Expects wheels of what the machine lacks in .whl/ (deepspeed, hjson, pydantic, pydantic-core,
# annotated-types, typing-inspection, decord, as `pip download` or `pip wheel` make them) and the demo clips in DATA_DIR
# (python -m action_launch.datasets.synthetic DATA_DIR --num-train 640 --num-val 128, made where PyAV is).
# Runs: the demo for 2 epochs in bf16 and test.py on its best checkpoint; one epoch in fp16 and one under
# torchrun with NCCL; bench/gpu_throughput.py over every paper preset (TimeSformer-B also compiled and in
# DeepSpeed's own bf16 mode). Logs and JSON lines go to OUT_DIR.
set -uo pipefail
DATA=${1:?data dir}
OUT=${2:?output dir}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
python3 -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/site . || exit 1
export PYTHONPATH=/tmp/site
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, deepspeed; print('torch', torch.__version__, 'deepspeed', deepspeed.__version__)" | tee -a "$OUT/gpu.txt"

run() {  # run NAME SECONDS CMD...: a time limit each, so one hang cannot eat the lease
    local name=$1 limit=$2; shift 2
    local start=$SECONDS
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    echo "$name: exit $rc in $((SECONDS - start)) s" | tee -a "$OUT/summary.txt"
    grep -E "validation:|test/top1|Error|error:|warning" "$OUT/$name.log" | grep -v "^\[" | tail -4
}

COMMON=(--config configs/demo.yaml "data.root=$DATA" tracking.enabled=false data.num_workers=6 output_dir=/tmp/runs)
run demo_bf16 80 python3 launch/train.py "${COMMON[@]}" name=bf16 train.epochs=2 train.precision=bf16 train.log_every_steps=20
run test_bf16 50 python3 launch/test.py --checkpoint /tmp/runs/demo/bf16 --no-track
run demo_fp16 60 python3 launch/train.py "${COMMON[@]}" name=fp16 train.epochs=1 optim.warmup_epochs=0 train.precision=fp16
run torchrun_nccl 60 python3 -m torch.distributed.run --standalone --nproc_per_node 1 launch/train.py "${COMMON[@]}" \
    name=nccl train.epochs=1 optim.warmup_epochs=0 train.precision=bf16
run bench_timesformer 150 python3 bench/gpu_throughput.py --presets timesformer_base --compile --deepspeed-bf16 \
    --json-out "$OUT/gpu_throughput.jsonl"
run bench_presets 180 python3 bench/gpu_throughput.py \
    --presets light_timesformer,stabn_r50,tsm_r50,tsm_r50_dyreg,msg3d_ntu60,msg3d_kinetics,msg3d_personality,hiint_cpmt \
    --channels-last --json-out "$OUT/gpu_throughput.jsonl"
tail -n 14 "$OUT/bench_timesformer.log" "$OUT/bench_presets.log"
cat "$OUT/summary.txt"
