#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs the Debian servers the integration tests start
# (nats-server, docker-registry, umoci, skopeo, containerd) and the npm packages, builds every project,
# runs lint and type checks, then unit and integration tests. Prints "N passed, N failed" at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin:/sbin"

bash scripts/prepare.sh
npx nx run-many -t lint typecheck --outputStyle=static
npx prettier --check . --log-level=warn

mkdir -p results
status=0
npx vitest run --reporter=default --reporter=json --outputFile.json=results/vitest.json "$@" || status=$?
node -e '
  const r = require("./results/vitest.json");
  const skipped = r.numPendingTests + r.numTodoTests;
  console.log(`${r.numPassedTests} passed, ${r.numFailedTests} failed` + (skipped ? `, ${skipped} skipped` : ""));
' || true
exit "$status"
