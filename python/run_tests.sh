#!/usr/bin/env bash
# Build the ftri wheel (abi3, Python >= 3.9), install it into a fresh venv and run the pytest
# suite, which compares the bindings with transformers' activations (tests/fixtures) and with the
# CLI binary's --json output (target/release/ftri, built here if absent).
#
#   python/run_tests.sh [pytest args...]
#   VENV=/tmp/venv-py PYTHON=python3 CARGO_TARGET_DIR=target python/run_tests.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
venv="${VENV:-$here/.venv}"
python="${PYTHON:-python3}"
# Sharing the main crate's target folder reuses its compiled dependencies.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"

t0=$(date +%s)
if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
"$venv/bin/pip" install -q --upgrade pip >/dev/null
"$venv/bin/pip" install -q "maturin>=1.5,<2" numpy pandas pyarrow pytest safetensors tqdm
[ -x "$CARGO_TARGET_DIR/release/ftri" ] || (cd "$root" && cargo build --release --bin ftri)
t1=$(date +%s)
rm -rf "$here/dist"
(cd "$here" && "$venv/bin/maturin" build --release --out "$here/dist" -i "$venv/bin/python")
"$venv/bin/pip" install -q --force-reinstall --no-deps "$here"/dist/ftri-*.whl
t2=$(date +%s)
cd "$here/tests"
FTRI_BIN="$CARGO_TARGET_DIR/release/ftri" "$venv/bin/python" -m pytest -q "$@"
t3=$(date +%s)
echo "python/run_tests.sh: setup $((t1 - t0)) s, wheel $((t2 - t1)) s, tests $((t3 - t2)) s"
