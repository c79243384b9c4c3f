# Shared helpers for hack/ scripts. Source it; do not run it.
set -euo pipefail

DOCKYARD_CACHE="${DOCKYARD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dockyard}"
DOCKYARD_STATE="${DOCKYARD_STATE:-/var/lib/dockyard}"
# The local control plane: its state folder and the apiserver's port (hack/controlplane, hack/node.sh).
CP_DIR="${DOCKYARD_CONTROLPLANE_DIR:-$DOCKYARD_STATE/controlplane}"
API_PORT="${DOCKYARD_API_PORT:-16443}"
HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$HACK_DIR/.." && pwd)"

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# wait_until DEADLINE_SECONDS DESCRIPTION COMMAND...: poll COMMAND until it succeeds.
wait_until() {
  local deadline=$(( $(date +%s) + $1 )) what=$2; shift 2
  until "$@" >/dev/null 2>&1; do
    (( $(date +%s) < deadline )) || die "timed out waiting for $what"
    sleep 0.2
  done
}

# apt_install PKG...: install Debian packages that are missing (one apt-get update per run).
apt_install() {
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  (( ${#missing[@]} )) || return 0
  log "apt-get install ${missing[*]}"
  if [[ ! -f /tmp/.dockyard-apt-updated ]]; then apt-get update -qq && touch /tmp/.dockyard-apt-updated; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}
