#!/bin/sh
# Install the built wheel into a scratch folder and exercise it from outside the source tree.
# Usage: wheel_smoke.sh PYTHON DIST_DIR
set -eu
python="$1"
dist="$2"
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$python" -m pip install --quiet --disable-pip-version-check --no-deps --target "$tmp/site" "$dist"/hiercam-*.whl
cp "$here/wheel_smoke.py" "$tmp/wheel_smoke.py"
cd "$tmp"
PYTHONPATH="$tmp/site" "$python" wheel_smoke.py "$tmp/site"
PYTHONPATH="$tmp/site" "$tmp/site/bin/hiercam" --help >/dev/null
echo "wheel smoke test passed: $(ls "$dist")"
