#!/usr/bin/env bash
# Installs the Debian packages whose programs the integration tests start as real servers, promtool
# (from prometheus) for the alerting-rule tests, and curl,
# which `npm run bench:agent` uses as its HTTP client.
# Idempotent: a package is installed only when its command is missing, and `apt-get update` runs
# once, only if something has to be installed. Meant to run as root (CI and dev machines are root);
# elsewhere it uses sudo when that is available.
set -euo pipefail

# command:package pairs; containerd ships both `containerd` and `ctr`.
required=(
  nats-server:nats-server
  docker-registry:docker-registry
  umoci:umoci
  skopeo:skopeo
  containerd:containerd
  ctr:containerd
  curl:curl
  promtool:prometheus
  unzip:unzip
)

missing=()
for pair in "${required[@]}"; do
  cmd="${pair%%:*}"
  pkg="${pair##*:}"
  if ! command -v "$cmd" >/dev/null 2>&1; then
    # Debian installs some of these into /usr/sbin, which a non-login PATH may lack.
    if [ -x "/usr/sbin/$cmd" ] || [ -x "/sbin/$cmd" ]; then continue; fi
    case " ${missing[*]-} " in *" $pkg "*) ;; *) missing+=("$pkg") ;; esac
  fi
done

if [ "${#missing[@]}" -eq 0 ]; then
  echo "install-deps: all test servers present"
  exit 0
fi

as_root=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    as_root=(sudo -n)
  else
    echo "install-deps: need root (or sudo) to install: ${missing[*]}" >&2
    exit 1
  fi
fi

log="$(mktemp -t install-deps.XXXXXX.log)"
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
if ! "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update >"$log" 2>&1; then
  echo "install-deps: apt-get update failed (log: $log): $(grep -E '^(E|W):' "$log" | head -n 1)" >&2
  exit 1
fi
if ! "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
  "${missing[@]}" >>"$log" 2>&1; then
  echo "install-deps: apt-get install ${missing[*]} failed (log: $log): $(grep -E '^E:' "$log" | head -n 1)" >&2
  exit 1
fi

for pair in "${required[@]}"; do
  cmd="${pair%%:*}"
  if ! command -v "$cmd" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$cmd" ]; then
    echo "install-deps: $cmd still missing after installing ${pair##*:} (log: $log)" >&2
    exit 1
  fi
done
rm -f "$log"
echo "install-deps: installed ${missing[*]}"
