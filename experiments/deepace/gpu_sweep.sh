#!/usr/bin/env bash
# Table 6 / 7 / 10 at the WCR scale (experiment=deepace_ablation_wcr) on one GPU, as many runs at once as
# the budget allows, then the tables. Usage: experiments/deepace/gpu_sweep.sh OUT_DIR [BUDGET_S] [JOBS]
# Needs cytobench importable (installed, or PYTHONPATH=src) and a CUDA device.
set -euo pipefail
out=${1:?usage: gpu_sweep.sh OUT_DIR [BUDGET_S] [JOBS]}
budget=${2:-330}
jobs=${3:-16}
runs=runs/ablation_wcr_gpu
mkdir -p "$out"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg WANDB_MODE=offline NO_ALBUMENTATIONS_UPDATE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.cuda.is_available())" | tee -a "$out/gpu.txt"

# 1. the full model end to end on the GPU (fails fast on a device bug before the sweep spends the budget)
python train.py experiment=deepace_smoke +ablation=hnas_tnrl_tm logger=csv trainer.amp=false hydra.run.dir=runs/gpu_smoke \
  2>&1 | tail -4

# 2. the sweep: fp32 like the CPU runs (trainer.amp=false), TM runs first within each seed
( while sleep 60; do nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader; done ) &
monitor=$!
python experiments/deepace/parallel_sweep.py --out "$runs" --jobs "$jobs" --budget-s "$budget" --first-guess-s 150 \
  --reevaluate-device cuda --ablations hnas_tnrl_tm single1 hnas hnas_tnrl hnas_v1 --seeds 0-9 -- \
  experiment=deepace_ablation_wcr logger=csv trainer.amp=false || true
kill $monitor || true
cp "$runs/sweep.json" "$out/"

# 3. the tables (Template runs' NMS / SOFT / EG metrics were cached by the jobs)
for t in table6 table7 table10; do
  python -m cytobench.cli reproduce deepace/$t --runs "$runs" --device cuda --out "$out/${t}_wcr_scale_gpu.md" || true
done
tar czf "$out/runs_metrics.tgz" --exclude='*.pt' "$runs"
