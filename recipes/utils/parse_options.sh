#!/usr/bin/env bash
# Kaldi-style option parsing, sourced by a recipe after it sets its variables:
#   --some-name VALUE  (or --some-name=VALUE) sets the existing variable some_name.
# An option whose variable the recipe did not define, or one with no value, is an error.
# Each variable's line ends with a comment saying what it is; --help prints the recipe's header
# comment (the lines starting with '#' after the shebang), then every option with its value and comment.
# A recipe that hands its work to another (run_all.sh runs run.sh) sets FORWARD_TO=that script before
# sourcing this: that script's variables are then options here too, with its defaults, and the ones
# given are also collected, as given, in the array forwarded_options, to pass on.
# The command line as given is kept in the array recipe_args (record_command in log.sh writes it).

__mss_vars_of() {  # the variables a recipe sets before it sources this file, in order
  sed -n '1,/parse_options.sh/p' "$1" | sed -n 's/^\([a-z_][a-z0-9_]*\)=.*/\1/p' | awk '!seen[$0]++' | tr '\n' ' '
}
__mss_options() {  # __mss_options SCRIPT VARS: one line per option: name, current value, the comment of its line
  local __v
  for __v in $2; do
    printf '  --%-16s %-24s  %s\n' "${__v//_/-}" "${!__v-}" "$(sed -n "s/^$__v=.*[[:space:]]#[[:space:]]*//p" "$1" | head -n 1)"
  done
}
__mss_usage() {
  sed -n '2,/^[^#]/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'
  echo "Options (current values):"
  __mss_options "$0" "$__mss_vars"
  if [ -n "${FORWARD_TO:-}" ]; then
    echo "Options of $(basename "$FORWARD_TO"), passed on to it:"
    __mss_options "$FORWARD_TO" "$__mss_forwarded_vars"
  fi
}

recipe_args=("$@")
__mss_vars=$(__mss_vars_of "$0")
__mss_forwarded_vars=
if [ -n "${FORWARD_TO:-}" ]; then
  for __v in $(__mss_vars_of "$FORWARD_TO"); do
    case " $__mss_vars " in *" $__v "*) ;; *) __mss_forwarded_vars+="$__v " ;; esac
  done
  # that script's defaults, from its own assignment lines
  eval "$(sed -n '1,/parse_options.sh/p' "$FORWARD_TO" | grep -E "^(${__mss_forwarded_vars// /|}__none__)=")"
fi
forwarded_options=()

while [ $# -gt 0 ]; do
  case "$1" in
    --help|-h) __mss_usage; exit 0 ;;
    --*=*) __name=${1%%=*}; __value=${1#*=}; shift ;;
    --*) __name=$1; [ $# -ge 2 ] || { echo "$0: option $1 needs a value" >&2; exit 2; }; __value=$2; shift 2 ;;
    *) echo "$0: unexpected argument '$1' (options are --name value)" >&2; exit 2 ;;
  esac
  __var=${__name#--}; __var=${__var//-/_}
  case " $__mss_vars " in
    *" $__var "*) ;;
    *) case " $__mss_forwarded_vars " in
         *" $__var "*) forwarded_options+=("$__name" "$__value") ;;
         *) echo "$0: unknown option $__name" >&2; exit 2 ;;
       esac ;;
  esac
  printf -v "$__var" '%s' "$__value"
done
unset __name __value __var __v
