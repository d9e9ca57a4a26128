#!/usr/bin/env bash
# The whole study: the mixture and silence baselines and every architecture through recipes/run.sh (prep,
# curriculum stages 1->2->3 with warm starts, a no-curriculum control, separation, BSSEval v4
# scoring), then one comparison of every run: $exp/report/{RESULTS.md,results.csv,index.html} and $exp/RESULTS.md.
#
# With no data set named it runs on the built-in synthetic demo corpus (CPU minutes);
# --musdb PATH --preset paper runs the real study (GPU). Every option of run.sh is an option here
# too and is passed on to it; --stage/--stop-stage select run.sh's stages (0 prep ... 8 summary)
# for every architecture, stage 9 is the final comparison (of every score file in $exp/scores,
# this run's first). Reruns skip finished steps; logs are in $exp/*/logs/.
#   bash recipes/run_all.sh
#   bash recipes/run_all.sh --archs "bsrnn bsrnn_se" --stage 6
set -euo pipefail

archs="unet unet_lite demucs_lstm demucs_attn bsrnn bsrnn_se"  # architectures, run after the mixture and silence baselines
FORWARD_TO=$(dirname "$0")/run.sh

. "$(dirname "$0")/utils/parse_options.sh"
. "$(dirname "$0")/cmd.sh"
. "$(dirname "$0")/utils/log.sh"

case " ${forwarded_options[*]-} " in *" --arch "*) echo "$0: choose the architectures with --archs" >&2; exit 2 ;; esac

mkdir -p "$exp/logs"
record_command "$exp/command.txt"
started=$(date +%s)
for arch in mixture silence; do  # the first preps the cache that every architecture shares
  log "=== $arch ==="
  bash "$FORWARD_TO" --arch "$arch" ${forwarded_options[@]+"${forwarded_options[@]}"}
done
for arch in $archs; do
  log "=== $arch ==="
  bash "$FORWARD_TO" --arch "$arch" ${forwarded_options[@]+"${forwarded_options[@]}"} --prep false
done

if [ $stage -le 9 ] && [ $stop_stage -ge 9 ]; then
  log "Stage 9: compare every run of the study -> $exp/report/, $exp/RESULTS.md"
  # this run's architectures first, then every other score file of the study already in $exp/scores,
  # so that rerunning a subset (--archs unet --stage 6) does not shrink the study's report
  files=("$exp/scores/mixture.json" "$exp/scores/silence.json")
  for arch in $archs; do
    for f in "$exp/scores/$arch.json" "$exp/scores/$arch".seed*.json "$exp/scores/${arch}_nocurriculum.json" \
             "$exp/scores/${arch}_nocurriculum".seed*.json; do
      [ -f "$f" ] && files+=("$f")
    done
  done
  for f in "$exp"/scores/*.json; do
    [ -f "$f" ] || continue
    case " ${files[*]} " in *" $f "*) ;; *) files+=("$f") ;; esac
  done
  run_step "$exp/logs/9_compare.log" $mss compare "${files[@]}" -o "$exp/report"
  cp "$exp/report/RESULTS.md" "$exp/RESULTS.md"
  cat "$exp/RESULTS.md"
fi
log "finished in $(( $(date +%s) - started )) s: $exp/RESULTS.md"
