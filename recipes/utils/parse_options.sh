#!/usr/bin/env bash
# Kaldi-style option parsing, sourced by a recipe after it sets its variables:
#   --some-name VALUE  (or --some-name=VALUE) sets the existing variable some_name.
# An option whose variable the recipe did not define, or one with no value, is an error.
# --help prints the recipe's header comment (lines starting with '#' after the shebang) and the variables.

__mss_usage() {
  sed -n '2,/^[^#]/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'
  echo "Options (current values):"
  for __v in $__mss_vars; do printf '  --%-22s %s\n' "${__v//_/-}" "${!__v-}"; done
}
__mss_vars=$(sed -n '1,/parse_options.sh/p' "$0" | sed -n 's/^\([a-z_][a-z0-9_]*\)=.*/\1/p' | sort -u | tr '\n' ' ')

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
    *) echo "$0: unknown option $__name" >&2; exit 2 ;;
  esac
  printf -v "$__var" '%s' "$__value"
done
unset __name __value __var
