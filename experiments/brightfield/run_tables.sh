#!/usr/bin/env bash
# SEU-Net thesis Tables 5.1-5.6 at one scale: every variant over seeds, then the tables beside the thesis'.
# Usage: experiments/brightfield/run_tables.sh [SCALE] [OUT]
#   SCALE: cpu (default; ~4 h on 2 CPU cores for all six tables) or paper (GPU; the thesis' 1000 epochs)
#   OUT:   folder of the sweeps and tables (default runs/brightfield_<SCALE>)
# Environment: SEEDS (default 0,1,2), SYNTH=0 skips Tables 5.4-5.6 (pix2pix + copy-paste sets, `cytobench synth`),
# SYNTH_SIZES (default "32 96" at cpu: 1x and 3x the real training images, as epochs grow with the set; "100 1000"
# at paper, as the thesis),
# P2P_EPOCHS / P2P_SIZE / P2P_WIDTH (pix2pix training; defaults per scale below), DEVICE (reproduce; auto).
# Needs cytobench importable (installed, or PYTHONPATH=src). Each step is one command of experiments/brightfield/README.md.
set -euo pipefail
scale=${1:-cpu}
out=${2:-runs/brightfield_$scale}
seeds=${SEEDS:-0,1,2}
device=${DEVICE:-auto}
case "$scale" in
  cpu) sizes=${SYNTH_SIZES:-32 96}; p2p_epochs=${P2P_EPOCHS:-100}; p2p_size=${P2P_SIZE:-128}; p2p_width=${P2P_WIDTH:-16} ;;
  paper) sizes=${SYNTH_SIZES:-100 1000}; p2p_epochs=${P2P_EPOCHS:-200}; p2p_size=${P2P_SIZE:-512}; p2p_width=${P2P_WIDTH:-64} ;;
  *) echo "unknown scale $scale (cpu or paper)" >&2; exit 2 ;;
esac
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg WANDB_MODE=offline NO_ALBUMENTATIONS_UPDATE=1
if [ "$scale" = cpu ]; then export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}; fi  # small nets: 1 thread per run is fastest
tables="$out/tables"
reproduce() { python -m cytobench.cli reproduce "brightfield/$1" --scale "$scale" --device "$device" --out "$tables" "${@:2}"; }

# Tables 5.1 / 5.2: base, 2-, 3-, 4-head (decoupled decoders) x seeds
python train.py -m experiment=seunet_heads scale="$scale" seed="$seeds" hydra.sweep.dir="$out/heads"
reproduce table5_1 --runs "$out/heads"
reproduce table5_2 --runs "$out/heads"

# Table 5.3: attention maps v0-v4 (focal loss) and the plain model (BCE, no map) x seeds
python train.py -m experiment=seunet_overlap scale="$scale" seed="$seeds" hydra.sweep.dir="$out/overlap"
python train.py -m experiment=seunet_overlap scale="$scale" seed="$seeds" model.overlap_loss=bce \
  model.attention_key=null hydra.sweep.dir="$out/overlap_plain"
reproduce table5_3 --runs "$out/overlap" "$out/overlap_plain"

[ "${SYNTH:-1}" = 0 ] && exit 0
# Tables 5.4-5.6: pix2pix (phase -> brightfield planes) on the real training set, copy-paste sets translated by
# it, then SEU-Net on real / synthetic / mixed training images, scored on real test images
real=$(python -c "import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))['data']['dir'])" \
  "$(ls "$out"/heads/*/config.yaml | head -1)")
python -m cytobench.cli synth pix2pix-train --data "$real" --out "$out/pix2pix" --epochs "$p2p_epochs" \
  --size "$p2p_size" --width "$p2p_width" --overwrite
first=1
for n in $sizes; do
  python -m cytobench.cli synth make --data "$real" --n "$n" --pix2pix "$out/pix2pix/best.pt" --val-fraction 0 \
    --out "$out/synth_$n" --overwrite
  sets=synthetic,mixed
  if [ "$first" = 1 ]; then sets=real,synthetic,mixed; first=0; fi  # the Original runs once
  python train.py -m experiment=seunet_synthetic scale="$scale" seed="$seeds" data.train_set="$sets" \
    data.synthetic_dir="$out/synth_$n" hydra.sweep.dir="$out/synthetic_$n"
done
for t in table5_4 table5_5 table5_6; do reproduce "$t" --runs "$out"/synthetic_*; done
python -m cytobench.cli synth fid --real "$real" --fake "$out/synth_${sizes##* }" | tee "$tables/fid.txt" || true
