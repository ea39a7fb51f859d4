#!/usr/bin/env bash
# The placement benchmark on a GPU machine without a network (see scripts/device_env.sh):
#
#   bash scripts/device_wheels.sh                       # here, where a package registry answers
#   bash scripts/gpu_placement.sh OUT_DIR [CARD]        # there: OUT_DIR/placement_<CARD>.json/.md
#
# Rows (rlaccel.bench.rows; `auto` is the GPU): PureJaxRL on the GPU and on the host's CPU;
# rlaccel fused on the GPU (int8 and fp32 actors) and on the CPU; the learner on the GPU with
# int8 actors on the CPU, pipelined and in turn; the same at 1024 envs; 16 seeds vmapped on
# the GPU (PureJaxRL, rlaccel's sweep); DQN. ROWS=a,b,... runs others; each row has
# --row-timeout (ROW_TIMEOUT, default 150 s); the JSON is written after every row, so a run
# cut short keeps what it measured.
set -euo pipefail
out=${1:?usage: scripts/gpu_placement.sh OUT_DIR [CARD]}
card=${2:-nvidia-h200}
rows=${ROWS:-purejaxrl_1,fused_int8,split_int8_cpu_actors,fused_int8_cpu,purejaxrl_1_cpu,fused_fp32,split_serial_int8_cpu_actors,purejaxrl_wide,fused_int8_wide,split_int8_wide_cpu_actors,purejaxrl_wide_cpu,fused_int8_wide_cpu,purejaxrl_16,sweep16_int8,purejaxrl_dqn,dqn_purejaxrl_fp32,dqn_fused_int8}
cd "$(dirname "$0")/.."
source scripts/device_env.sh
python3 -m rlaccel bench --rows "$rows" --row-timeout "${ROW_TIMEOUT:-150}" --out "$out/placement_$card.json"
