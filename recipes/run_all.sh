#!/usr/bin/env bash
# The whole pipeline, Kaldi-style: prep -> train -> separate -> score -> compare.
#
# With no data set named it runs on the built-in synthetic demo corpus (minutes on a CPU);
# --musdb PATH runs on a MUSDB18 / MUSDB18-HQ root instead. Every variable below is an
# option (--stage 2, --archs "unet", --epochs 20 ...). Stages:
#   0 prep      data set -> $exp/data/cache.h5
#   1 train     one model per architecture -> $exp/<arch>/{best,last}.pt
#   2 separate  test split -> $exp/<arch>/preds/
#   3 score     -> $exp/scores/<arch>.json
#   4 compare   -> $exp/report/{RESULTS.md,results.csv}
# Reruns skip finished work; per-stage logs are in $exp/logs/.
set -euo pipefail


stage=0
stop_stage=100
exp=exp/demo
musdb=
sample_rate=16000
archs="unet"
preset=small
epochs=4
steps_per_epoch=40
batch_size=8
segment=3
demo_tracks=20
demo_duration=12
museval=true
jobs=2
device=auto
mss="python -m mss_tools"

. "$(dirname "$0")/utils/parse_options.sh"
. "$(dirname "$0")/utils/log.sh"

if [ -n "$musdb" ]; then data_src=$musdb; else data_src=demo; fi
cache=$exp/data/cache.h5
logs=$exp/logs
mkdir -p "$exp" "$logs"
echo "$0 $*" > "$exp/command.txt"
log "experiment $exp on ${data_src} at ${sample_rate} Hz; architectures: $archs"

if [ $stage -le 0 ] && [ $stop_stage -ge 0 ]; then
  log "stage 0: prep"
  run_step "$logs/0_prep.log" $mss prep --sr "$sample_rate" -j "$jobs" \
    --demo-tracks "$demo_tracks" --demo-duration "$demo_duration" "$data_src" "$cache"
fi

if [ $stage -le 1 ] && [ $stop_stage -ge 1 ]; then
  for arch in $archs; do
    log "stage 1: train $arch"
    run_step "$logs/1_train_$arch.log" $mss train --arch "$arch" --preset "$preset" --epochs "$epochs" \
      --steps-per-epoch "$steps_per_epoch" --batch-size "$batch_size" --segment "$segment" \
      --device "$device" -o "$exp/$arch" "$cache"
  done
fi

if [ $stage -le 2 ] && [ $stop_stage -ge 2 ]; then
  for arch in $archs; do
    log "stage 2: separate $arch"
    run_step "$logs/2_separate_$arch.log" $mss separate "$exp/$arch/best.pt" "$cache" --split test \
      --device "$device" -o "$exp/$arch/preds"
  done
fi

if [ $stage -le 3 ] && [ $stop_stage -ge 3 ]; then
  museval_flag=; [ "$museval" = true ] && museval_flag=--museval
  for arch in $archs; do
    log "stage 3: score $arch"
    run_step "$logs/3_score_$arch.log" $mss score "$exp/$arch/preds" $museval_flag -j "$jobs" \
      -o "$exp/scores/$arch.json"
  done
fi

if [ $stage -le 4 ] && [ $stop_stage -ge 4 ]; then
  log "stage 4: compare"
  score_files=
  for arch in $archs; do score_files="$score_files $exp/scores/$arch.json"; done
  run_step "$logs/4_compare.log" $mss compare $score_files -o "$exp/report"
  cat "$exp/report/RESULTS.md"
fi
log "finished: $exp/report/RESULTS.md"
