#!/usr/bin/env bash
# Helpers for recipes: timestamped log lines and logged, skippable stages.

run_cmd=("${run_cmd[@]+"${run_cmd[@]}"}")

log() { echo "$(date '+%Y-%m-%d %H:%M:%S') [$(basename "$0")] $*" >&2; }

# record_command FILE [NOTE]: append this call of the recipe to FILE, one line: the command as given
# (shell-quoted, so that it can be run again), then the date and NOTE as a comment.
record_command() {
  mkdir -p "$(dirname "$1")"
  {
    printf '%q' "$0"
    [ ${#recipe_args[@]} -eq 0 ] || printf ' %q' "${recipe_args[@]}"
    printf '  # %s%s\n' "$(date '+%Y-%m-%d %H:%M:%S')" "${2:+, $2}"
  } >> "$1"
}

# run_step LOGFILE CMD...: runs CMD (behind ${run_cmd[@]}, see cmd.sh) with its output in LOGFILE (plus a header and footer that
# record the command, start, end, duration and exit code); on failure names the log and exits.
run_step() {
  local logfile=$1; shift
  mkdir -p "$(dirname "$logfile")"
  local start; start=$(date +%s)
  {
    echo "# command: $*"
    echo "# started: $(date '+%Y-%m-%d %H:%M:%S')"
  } > "$logfile"
  set +e
  "${run_cmd[@]}" "$@" >> "$logfile" 2>&1
  local rc=$?
  set -e
  local end; end=$(date +%s)
  {
    echo "# ended: $(date '+%Y-%m-%d %H:%M:%S')"
    echo "# duration: $((end - start)) s"
    echo "# exit code: $rc"
  } >> "$logfile"
  if [ $rc -ne 0 ]; then
    log "FAILED (exit $rc): $*"
    log "see $logfile:"
    tail -n 5 "$logfile" | sed 's/^/    /' >&2
    exit $rc
  fi
  log "done in $((end - start)) s: $* (log: $logfile)"
}
