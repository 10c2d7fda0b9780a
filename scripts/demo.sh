#!/usr/bin/env bash
# The quick-start demo: applies examples/demo.yaml on this machine and keeps it converged until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
node scripts/build.mjs
exec node bin/backplane.js run --file examples/demo.yaml "$@"
