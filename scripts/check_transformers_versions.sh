#!/usr/bin/env bash
# Does an hf-llava export load and agree with minillava in other transformers versions?
#
#   scripts/check_transformers_versions.sh [VERSION ...]     (default: 4.46.3 4.49.0)
#
# Exports tiny CLIP- and SigLIP-based models with minillava's venv (and its transformers), records our logits
# and greedy replies, then checks them with LlavaForConditionalGeneration, AutoTokenizer and AutoProcessor in
# the current venv and in one venv per VERSION (torch 2.13 CPU, no minillava), made once under $COMPAT_DIR.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
COMPAT_DIR="${COMPAT_DIR:-${TMPDIR:-/tmp}/minillava-compat}"
VERSIONS=("$@")
[ ${#VERSIONS[@]} -eq 0 ] && VERSIONS=(4.46.3 4.49.0)
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1

"$PY" "$ROOT/scripts/hf_compat.py" make "$COMPAT_DIR/folders"
status=0
"$PY" "$ROOT/scripts/hf_compat.py" check "$COMPAT_DIR/folders" || status=1
for version in "${VERSIONS[@]}"; do
    venv="$COMPAT_DIR/venv-$version"
    if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import transformers" 2>/dev/null; then
        echo "making $venv (torch 2.13 CPU + transformers $version) ..."
        python3 -m venv "$venv"
        "$venv/bin/pip" install -q torch==2.13.0
        "$venv/bin/pip" install -q -c "$ROOT/constraints.txt" "transformers==$version" safetensors pillow numpy jinja2
    fi
    "$venv/bin/python" "$ROOT/scripts/hf_compat.py" check "$COMPAT_DIR/folders" || status=1
done
exit $status
