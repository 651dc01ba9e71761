#!/usr/bin/env bash
# Brings up a local mesh on this machine and pulls a real image through it: NATS with JetStream, a local
# registry with a sample multi-layer image, discovery, announcer, scheduler, three agents, and containerd
# pulling through two of the agents. Installs what it needs first. Pass --keep to leave the mesh running.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin:/sbin"
bash scripts/prepare.sh
exec npx tsx scripts/up.ts "$@"
