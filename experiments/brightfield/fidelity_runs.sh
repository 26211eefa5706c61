#!/usr/bin/env bash
# SEU-Net's thesis claims on the simulator, as many small runs in parallel (a GPU machine, or JOBS=2 on CPU)
# (Tables 5.1-5.3): base vs 4-head (cytoplasm F1), overlap head without vs with attention maps v0-v4
# (overlap F1 at threshold 0.3). Every run: 512 px simulated images (48 train / 12 val), 256 px crops,
# batch 8, SEU-Net width 32 / depth 4, a fixed number of epochs. Then Tables 5.1 and 5.3 score every finished
# run on one held-out simulated test set (mean +- std over seeds, one-sided Welch p-values of the thesis' signs)
# into OUT_DIR/tables. The same measurement as run_tables.sh, run as parallel jobs instead of serial sweeps.
#
# Usage: bash experiments/brightfield/fidelity_runs.sh OUT_DIR [EPOCHS] [SEEDS]   (sizes: see below)
set -u
OUT=${1:?usage: fidelity_runs.sh OUT_DIR [EPOCHS] [SEEDS]}
EPOCHS=${2:-40}
SEEDS=${3:-"0 1"}
LIMIT=${RUN_LIMIT_S:-300}   # seconds per run at most (a run cut short keeps its last evaluation)
PY=${PYTHON:-python3}
mkdir -p "$OUT/runs"
# sizes: GPU defaults; on CPU e.g. SIZE=256 CROP=128 BATCH=4 WIDTH=8 DEPTH=3 JOBS=2
SIZE=${SIZE:-512} CROP=${CROP:-256} BATCH=${BATCH:-8} WIDTH=${WIDTH:-32} DEPTH=${DEPTH:-4} JOBS=${JOBS:-64}
COMMON=(scale=cpu data.size=$SIZE data.n_images=${N_IMAGES:-60} data.val_fraction=0.2 data.crop=$CROP
        data.batch_size=$BATCH model.width=$WIDTH model.depth=$DEPTH trainer.max_epochs=$EPOCHS
        trainer.eval_period=${EVAL_PERIOD:-10}
        trainer.checkpoint_period=1000 trainer.device=auto logger=csv "data_dir=$OUT/data")
launch() {  # name, then overrides; at most JOBS runs at a time
  local name=$1; shift
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n; done
  timeout "$LIMIT" "$PY" train.py "$@" "${COMMON[@]}" "hydra.run.dir=$OUT/runs/$name" > "$OUT/runs/$name.log" 2>&1 &
}
for s in $SEEDS; do
  launch "heads-base_s$s" experiment=seunet_heads "model.heads=[cytoplasm]" model.decoder=shared seed=$s
  launch "heads-4head_s$s" experiment=seunet_heads "model.heads=[cytoplasm,nuclei,border,background]" model.decoder=decoupled seed=$s
  launch "overlap-none-bce_s$s" experiment=seunet_overlap model.overlap_loss=bce seed=$s
  launch "overlap-none-focal_s$s" experiment=seunet_overlap model.overlap_loss=focal model.attention_key=null seed=$s
  for v in 0 1 2 3 4; do
    launch "overlap-v${v}_s$s" experiment=seunet_overlap model.overlap_loss=focal model.attention_key=overlap_attention_v$v seed=$s
  done
done
wait
reproduce() {  # table, run folders
  "$PY" -m cytobench.cli reproduce "brightfield/$1" --runs "${@:2}" --scale cpu --device auto \
    --out "$OUT/tables" --data-dir "$OUT/data" | tee "$OUT/$1.txt"
}
reproduce table5_1 "$OUT"/runs/heads-*/
reproduce table5_3 "$OUT"/runs/overlap-*/
