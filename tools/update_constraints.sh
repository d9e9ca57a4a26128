#!/usr/bin/env bash
# Regenerate constraints.txt, the lock of the whole environment: resolve setup.cfg's
# requirements (torch/torchaudio pinned there as an exact pair) afresh in a throwaway
# virtual environment and record every installed version. Review the diff, run the tests,
# commit.  Usage: bash tools/update_constraints.sh
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q -e '.[test]'
{
  echo "# The lock of the whole environment (pip constraints), used by the README's install commands"
  echo "# and by CI: pip install -c constraints.txt -e '.[test]'."
  echo "# Regenerate with: bash tools/update_constraints.sh"
  "$work/venv/bin/pip" freeze --exclude-editable | grep -v '^-e '
} > constraints.txt.new
mv constraints.txt.new constraints.txt
echo "wrote constraints.txt ($(grep -vc '^#' constraints.txt) packages)"
