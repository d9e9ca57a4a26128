#!/usr/bin/env bash
# One architecture through the whole study, Kaldi-style:
#   0 prep        data set -> $exp/data/cache_<rate>.h5 (shared by every architecture)
#   1 remix       mix plans for curriculum stages 1, 2, 3 -> $exp/<arch>/plans/
#   2 train s1    target + 1 distractor            -> $exp/<arch>/s1
#   3 train s2    target + 2 distractors, warm start from s1 -> $exp/<arch>/s2
#   4 train s3    full mixtures, warm start from s2  -> $exp/<arch>/s3
#   5 control     no curriculum: stage 3 only, the same total steps -> $exp/<arch>/control
#   6 separate    the test split with s3, the control, and the mixture baseline (estimate = mixture)
#   7 score       BSSEval v4 (--museval) -> $exp/scores/<arch>.json, <arch>_nocurriculum.json, mixture.json
#   8 summary     mixture vs curriculum vs control -> $exp/<arch>/summary/RESULTS.md
# Training options come from recipes/conf/<preset>/<arch>.json (presets: demo for CPU minutes, lite for a
# 4 GB GPU at 22.05 kHz, paper for the published setups at 44.1 kHz, tiny for smoke tests).
# Every variable below is an option: --arch bsrnn_se --preset lite --musdb /data/musdb18 ...
# Reruns skip finished steps; each step logs to $exp/<arch>/logs/.
set -euo pipefail

arch=unet
preset=demo
exp=exp/demo
musdb=
sample_rate=
targets=all
stage=0
stop_stage=100
control=true
museval=true
jobs=2
device=auto
demo_tracks=20
demo_duration=12
cmd=local
mss="python -m mss_tools"

. "$(dirname "$0")/utils/parse_options.sh"
. "$(dirname "$0")/cmd.sh"
. "$(dirname "$0")/utils/log.sh"

conf="$(dirname "$0")/conf/$preset/$arch.json"
[ -f "$conf" ] || { echo "$0: no config $conf (architectures: unet unet_lite demucs_lstm demucs_attn bsrnn bsrnn_se; presets: demo lite paper)" >&2; exit 2; }
conf_get() { python3 -c 'import json, sys; print(json.load(open(sys.argv[1])).get(sys.argv[2], sys.argv[3]))' "$conf" "$1" "$2"; }
if [ -z "$sample_rate" ]; then
  case $preset in tiny) sample_rate=8000 ;; demo) sample_rate=16000 ;; lite) sample_rate=22050 ;; *) sample_rate=44100 ;; esac
fi
epochs=$(conf_get epochs 10)
steps=$(conf_get steps-per-epoch 100)
batch=$(conf_get batch-size 8)
segment=$(conf_get segment 3)
examples=$((epochs * steps * batch))
target_opt=(); [ "$targets" != all ] && target_opt=(--targets "$targets")
if [ -n "$musdb" ]; then data_src=$musdb; else data_src=demo; fi

cache=$exp/data/cache_${sample_rate}.h5
dir=$exp/$arch
logs=$dir/logs
mkdir -p "$logs" "$exp/scores"
{ echo "$0 $*"; echo "# conf: $conf"; } > "$dir/command.txt"
cp "$conf" "$dir/conf.json"
log "$arch ($preset) on ${data_src} at ${sample_rate} Hz: $epochs epochs x $steps steps per stage, segment ${segment}s"

if [ $stage -le 0 ] && [ $stop_stage -ge 0 ]; then
  mkdir -p "$exp/data"
  run_step "$logs/0_prep.log" $mss prep --sr "$sample_rate" -j "$jobs" \
    --demo-tracks "$demo_tracks" --demo-duration "$demo_duration" "$data_src" "$cache"
fi

if [ $stage -le 1 ] && [ $stop_stage -ge 1 ]; then
  for s in 1 2 3; do
    [ -f "$dir/plans/s$s.h5" ] && continue
    run_step "$logs/1_remix_s$s.log" $mss remix "$cache" "$dir/plans/s$s.h5" --target "$targets" --stage $s \
      --segment "$segment" --examples "$examples" --seed $s
  done
fi

train_stage() {  # train_stage STEP NAME PLAN EPOCHS [INIT]
  local step=$1 name=$2 plan=$3 n_epochs=$4 init=${5:-}
  local init_opt=(); [ -n "$init" ] && init_opt=(--init "$init")
  run_step "$logs/${step}_train_$name.log" $mss train --config "$conf" "${target_opt[@]}" --plan "$plan" \
    --epochs "$n_epochs" --device "$device" "${init_opt[@]}" -o "$dir/$name" "$cache"
}
if [ $stage -le 2 ] && [ $stop_stage -ge 2 ]; then train_stage 2 s1 "$dir/plans/s1.h5" "$epochs"; fi
if [ $stage -le 3 ] && [ $stop_stage -ge 3 ]; then train_stage 3 s2 "$dir/plans/s2.h5" "$epochs" "$dir/s1/best.pt"; fi
if [ $stage -le 4 ] && [ $stop_stage -ge 4 ]; then train_stage 4 s3 "$dir/plans/s3.h5" "$epochs" "$dir/s2/best.pt"; fi
if [ $stage -le 5 ] && [ $stop_stage -ge 5 ] && [ "$control" = true ]; then
  train_stage 5 control "$dir/plans/s3.h5" $((3 * epochs))
fi

runs=(s3); [ "$control" = true ] && runs+=(control)
if [ $stage -le 6 ] && [ $stop_stage -ge 6 ]; then
  run_step "$logs/6_separate_mixture.log" $mss separate mixture "$cache" --split test -o "$exp/mixture/preds"
  for run in "${runs[@]}"; do
    run_step "$logs/6_separate_$run.log" $mss separate "$dir/$run/best.pt" "$cache" --split test \
      --device "$device" -o "$dir/preds/$run"
  done
fi

score_name() { if [ "$1" = s3 ]; then echo "$arch"; else echo "${arch}_nocurriculum"; fi; }
if [ $stage -le 7 ] && [ $stop_stage -ge 7 ]; then
  museval_flag=(); [ "$museval" = true ] && museval_flag=(--museval)
  run_step "$logs/7_score_mixture.log" $mss score "$exp/mixture/preds" "${museval_flag[@]}" -j "$jobs" \
    -o "$exp/scores/mixture.json"
  for run in "${runs[@]}"; do
    run_step "$logs/7_score_$run.log" $mss score "$dir/preds/$run" "${museval_flag[@]}" -j "$jobs" \
      -o "$exp/scores/$(score_name "$run").json"
  done
fi

if [ $stage -le 8 ] && [ $stop_stage -ge 8 ]; then
  files=("$exp/scores/mixture.json"); for run in "${runs[@]}"; do files+=("$exp/scores/$(score_name "$run").json"); done
  run_step "$logs/8_summary.log" $mss compare "${files[@]}" -o "$dir/summary" --no-listening
  log "summary: $dir/summary/RESULTS.md"
fi
