#!/usr/bin/env bash
# One architecture through the whole study, Kaldi-style:
#   0 prep        data set -> $exp/data/cache_<rate>.h5 (shared by every architecture)
#   1 remix       mix plans for curriculum stages 1, 2, 3 -> $exp/<arch>/plans/
#   2 train s1    target + 1 distractor            -> $exp/<arch>/s1
#   3 train s2    target + 2 distractors, warm start from s1 -> $exp/<arch>/s2
#   4 train s3    full mixtures, warm start from s2  -> $exp/<arch>/s3
#   5 control     no curriculum: stage 3 only, the same total steps -> $exp/<arch>/control
#   6 separate    the test split with s3 and the control -> $exp/<arch>/preds/ (one target: the target
#                 and no_<target>, the mixture minus the estimate, so that BSSEval's sir/sar are defined)
#   7 score       BSSEval v4 (--museval) -> $exp/scores/<arch>.json, <arch>_nocurriculum.json
#   8 summary     the baselines (once scored) vs curriculum vs control -> $exp/<arch>/summary/RESULTS.md
# --arch mixture and --arch silence are the baselines, every stem estimated as the mixture or as
# silence (a model that separates must beat both: silence scores about 0 dB sdr, above the
# mixture): stages 0, 6 and 7 only, scored to $exp/scores/<baseline>.json (run_all.sh runs them
# once, before the architectures).
# Training options come from recipes/conf/<preset>/<arch>.json (presets: demo for CPU minutes, lite for a
# 4 GB GPU at 22.05 kHz, paper for the published setups at 44.1 kHz, tiny for smoke tests), resolved by
# mss train --print-config (the conf, then the defaults of mss train and of the architecture).
# Every variable below is an option: --arch bsrnn_se --preset lite --musdb /data/musdb18 ...
# Reruns skip finished steps (every tool checks its output); each step logs to $exp/<arch>/logs/, and
# every call appends its command line to $exp/<arch>/command.txt.
set -euo pipefail

arch=unet                   # architecture (mss train --arch), or a baseline: mixture, silence
preset=demo                 # the training confs: recipes/conf/<preset>/ (demo, lite, paper, tiny)
exp=exp/demo                # the study's folder
musdb=                      # MUSDB18 or MUSDB18-HQ root; empty: the built-in synthetic demo corpus
sample_rate=                # cache sample rate; empty: the preset's (tiny and demo 8000, lite 22050, paper 44100)
targets=drums               # sources to separate: one (the study: target + 1 distractor -> + 2 -> all), several comma-separated, or all
loss=                       # one loss for every architecture (a common-loss control, e.g. l1_wave); empty: each its paper's
stage=0                     # first stage to run
stop_stage=100              # last stage to run
control=true                # also train and score the no-curriculum control (stage 5)
seeds=2                     # training seeds (demo: 2 fit its 30-minute budget on 2 cores); N > 1: seed k trains in $exp/<arch>/seed<k>/ and scores as <model>.seed<k>.json
museval=true                # also score isr/sir/sar (mss score --museval)
jobs=2                      # parallel jobs of prep and score
device=auto                 # device of training and separation: auto, cpu, cuda, cuda:1 ...
demo_tracks=40              # tracks of the demo corpus: 3 valid, demo_test_tracks test, the rest train
demo_test_tracks=16         # test tracks of the demo corpus (enough for a paired test)
demo_duration=10            # seconds per demo track
prep=true                   # run stage 0 (run_all.sh preps once, with the first baseline)
train_jobs=auto             # training chains (each seed's curriculum and control) run at once, each with cores/train_jobs threads; auto: 2 for the CPU presets (demo, tiny) on 2+ cores, else 1
cmd=local                   # where the steps run: local or slurm (recipes/cmd.sh)
mss="python -m mss_tools"   # the mss command

. "$(dirname "$0")/utils/parse_options.sh"
. "$(dirname "$0")/cmd.sh"
. "$(dirname "$0")/utils/log.sh"

conf="$(dirname "$0")/conf/$preset/$arch.json"
case $arch in mixture|silence) baseline=true ;; *) baseline=false ;; esac
if [ $baseline = false ] && [ ! -f "$conf" ]; then
  echo "$0: no config $conf (architectures: $(ls "$(dirname "$0")/conf/$preset" 2>/dev/null | sed "s/\.json$//" | tr "\n" " ")or the baselines mixture, silence; presets: demo lite paper tiny)" >&2
  exit 2
fi
if [ -z "$sample_rate" ]; then
  case $preset in tiny|demo) sample_rate=8000 ;; lite) sample_rate=22050 ;; *) sample_rate=44100 ;; esac
fi
target_opt=(); [ "$targets" != all ] && target_opt=(--targets "$targets")
two_stems=(); case $targets in all|*,*) ;; *) two_stems=(--two-stems "$targets") ;; esac
[ -n "$loss" ] && target_opt+=(--loss "$loss")
if [ -n "$musdb" ]; then data_src=$musdb; else data_src=demo; fi

cache=$exp/data/cache_${sample_rate}.h5
dir=$exp/$arch
logs=$dir/logs
mkdir -p "$logs" "$exp/scores"
if [ $baseline = true ]; then
  runs=("$arch")
  record_command "$dir/command.txt"
  log "$arch baseline on ${data_src} at ${sample_rate} Hz"
else
  seed_dirs=(""); [ "$seeds" -gt 1 ] && seed_dirs=($(for k in $(seq 1 "$seeds"); do echo "seed$k/"; done))
  runs=()
  for sd in "${seed_dirs[@]}"; do runs+=("${sd}s3"); [ "$control" = true ] && runs+=("${sd}control"); done
  record_command "$dir/command.txt" "conf $conf"
  cp "$conf" "$dir/conf.json"
  if [ $stage -le 5 ] && [ $stop_stage -ge 1 ]; then
    # the training options as mss train will use them
    train_config=$($mss train --config "$conf" "${target_opt[@]}" --print-config "$cache")
    config_get() { python3 -c 'import json, sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$train_config" "$1"; }
    epochs=$(config_get epochs)
    steps=$(config_get steps_per_epoch)
    batch=$(config_get batch_size)
    segment=$(config_get segment)
    examples=$((epochs * steps * batch))
    log "$arch ($preset) on ${data_src} at ${sample_rate} Hz: $epochs epochs x $steps steps per stage, segment ${segment}s"
  fi
fi

if [ $stage -le 0 ] && [ $stop_stage -ge 0 ] && [ "$prep" = true ]; then
  log "Stage 0: prep $data_src -> $cache"
  mkdir -p "$exp/data"
  run_step "$logs/0_prep.log" $mss prep --sr "$sample_rate" -j "$jobs" \
    --demo-tracks "$demo_tracks" --demo-test-tracks "$demo_test_tracks" --demo-duration "$demo_duration" \
    "$data_src" "$cache"
fi

if [ $baseline = false ]; then
  if [ $stage -le 1 ] && [ $stop_stage -ge 1 ]; then
    log "Stage 1: mix plans of curriculum stages 1, 2, 3 ($examples examples of ${segment}s) -> $dir/plans/"
    k=0
    for sd in "${seed_dirs[@]}"; do  # mss remix keeps a plan drawn from the same cache with the same options
      k=$((k + 1))
      for s in 1 2 3; do
        run_step "$logs/1_remix_${sd//\//_}s$s.log" $mss remix "$cache" "$dir/plans/${sd}s$s.h5" --target "$targets" \
          --stage $s --segment "$segment" --examples "$examples" --seed $((s + 100 * (k - 1)))
      done
    done
  fi

  train_stage() {  # train_stage STEP NAME PLAN EPOCHS SEED [INIT]
    local step=$1 name=$2 plan=$3 n_epochs=$4 k=$5 init=${6:-}
    local init_opt=(); [ -n "$init" ] && init_opt=(--init "$init")
    local seed_opt=(); [ "$seeds" -gt 1 ] && seed_opt=(--seed "$k")
    run_step "$logs/${step}_train_${name//\//_}.log" $mss train --config "$conf" "${target_opt[@]}" --plan "$plan" \
      --epochs "$n_epochs" --device "$device" "${seed_opt[@]}" "${init_opt[@]}" -o "$dir/$name" "$cache"
  }
  curriculum() {  # curriculum SEED_DIR SEED: stages 2, 3, 4 (each warm-started from the one before)
    local sd=$1 k=$2
    if [ $stage -le 2 ] && [ $stop_stage -ge 2 ]; then
      log "Stage 2: train curriculum stage 1 (target + 1 distractor) -> $dir/${sd}s1"
      train_stage 2 "${sd}s1" "$dir/plans/${sd}s1.h5" "$epochs" $k
    fi
    if [ $stage -le 3 ] && [ $stop_stage -ge 3 ]; then
      log "Stage 3: train curriculum stage 2 (target + 2 distractors), warm start from s1 -> $dir/${sd}s2"
      train_stage 3 "${sd}s2" "$dir/plans/${sd}s2.h5" "$epochs" $k "$dir/${sd}s1/best.pt"
    fi
    if [ $stage -le 4 ] && [ $stop_stage -ge 4 ]; then
      log "Stage 4: train curriculum stage 3 (full mixtures), warm start from s2 -> $dir/${sd}s3"
      train_stage 4 "${sd}s3" "$dir/plans/${sd}s3.h5" "$epochs" $k "$dir/${sd}s2/best.pt"
    fi
  }
  no_curriculum() {  # no_curriculum SEED_DIR SEED: stage 5
    local sd=$1 k=$2
    if [ $stage -le 5 ] && [ $stop_stage -ge 5 ] && [ "$control" = true ]; then
      log "Stage 5: train the no-curriculum control (full mixtures, the same total steps) -> $dir/${sd}control"
      train_stage 5 "${sd}control" "$dir/plans/${sd}s3.h5" $((3 * epochs)) $k
    fi
  }
  # the training chains, one curriculum and one control per seed: equal steps, independent of each other
  chains=(); k=0
  for sd in "${seed_dirs[@]}"; do
    k=$((k + 1)); chains+=("curriculum ${sd:-.} $k")
    [ "$control" = true ] && chains+=("no_curriculum ${sd:-.} $k")
  done
  if [ "$train_jobs" = auto ]; then
    train_jobs=1
    case $preset in demo|tiny) case $device in auto|cpu) [ "$(nproc)" -ge 2 ] && train_jobs=2 ;; esac ;; esac
  fi
  case $train_jobs in ''|*[!0-9]*|0) echo "$0: --train-jobs must be auto or a positive number" >&2; exit 2 ;; esac
  run_chain() { local fn=$1 sd=$2 k=$3; [ "$sd" = . ] && sd=; $fn "$sd" "$k"; }
  if [ "$train_jobs" -eq 1 ] || [ ${#chains[@]} -le 1 ]; then
    for chain in "${chains[@]}"; do run_chain $chain; done
  else
    # a queue of chains, train_jobs at a time, each with its share of the cores
    threads=$(( $(nproc) / train_jobs > 0 ? $(nproc) / train_jobs : 1 ))
    log "training ${#chains[@]} chains, $train_jobs at a time with $threads thread(s) each"
    failed=0
    for chain in "${chains[@]}"; do
      while [ "$(jobs -rp | wc -l)" -ge "$train_jobs" ]; do wait -n || failed=1; done
      [ $failed = 0 ] || break
      OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads run_chain $chain &
    done
    while [ "$(jobs -rp | wc -l)" -gt 0 ]; do wait -n || failed=1; done
    [ $failed = 0 ] || { log "a training chain failed (its log is named above)"; exit 1; }
  fi
fi

if [ $stage -le 6 ] && [ $stop_stage -ge 6 ]; then
  log "Stage 6: separate the test split with ${runs[*]} -> $dir/preds/"
  for run in "${runs[@]}"; do
    if [ $baseline = true ]; then model=("$run"); else model=("$dir/$run/best.pt" --device "$device"); fi
    run_step "$logs/6_separate_${run//\//_}.log" $mss separate "${model[@]}" "$cache" --split test \
      ${two_stems[@]+"${two_stems[@]}"} -o "$dir/preds/$run"
  done
fi

score_name() {  # s3 -> <arch>, control -> <arch>_nocurriculum; seed<k>/... adds .seed<k>
  local seed="" name=$1
  case $1 in seed*/*) seed=".${1%%/*}"; name=${1#*/} ;; esac
  case $name in s3) echo "$arch$seed" ;; control) echo "${arch}_nocurriculum$seed" ;; *) echo "$name$seed" ;; esac
}
if [ $stage -le 7 ] && [ $stop_stage -ge 7 ]; then
  log "Stage 7: score ${runs[*]} -> $exp/scores/"
  museval_flag=(); [ "$museval" = true ] && museval_flag=(--museval)
  for run in "${runs[@]}"; do
    run_step "$logs/7_score_${run//\//_}.log" $mss score "$dir/preds/$run" "${museval_flag[@]}" -j "$jobs" \
      -o "$exp/scores/$(score_name "$run").json"
  done
fi

if [ $stage -le 8 ] && [ $stop_stage -ge 8 ] && [ $baseline = false ]; then
  log "Stage 8: summary of ${runs[*]} and the baselines -> $dir/summary/RESULTS.md"
  files=()
  for name in mixture silence; do [ -f "$exp/scores/$name.json" ] && files+=("$exp/scores/$name.json"); done
  for run in "${runs[@]}"; do files+=("$exp/scores/$(score_name "$run").json"); done
  run_step "$logs/8_summary.log" $mss compare "${files[@]}" -o "$dir/summary" --no-listening
  log "summary: $dir/summary/RESULTS.md"
fi
