#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what the tests need, type-checks, lints, builds, runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
# etcd-server: the cluster tests start real etcd members on loopback. openssl: the https check's test certificate.
apt_install etcd-server openssl

echo "== typecheck"; npx tsc -p tsconfig.json --noEmit
echo "== lint"; npx eslint --max-warnings 0 .
echo "== build"; node scripts/build.mjs

shopt -s globstar nullglob
files=(test/**/*.test.ts)
if [ "$#" -gt 0 ]; then files=("$@"); fi
echo "== test (${#files[@]} files)"
# Timing-sensitive tests (parallelism, repair latency) share 2 cores: run files two at a time, not all at once.
exec node --import tsx --test --test-concurrency=2 --test-timeout=120000 --test-reporter=spec "${files[@]}"
