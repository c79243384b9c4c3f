#!/usr/bin/env bash
# Build docker compose v2 (the peer bench/peer_compose.py compares Dockyard's dependents with)
# from the Go module proxy into the cache; prints its path. Cached: nothing to do the second time.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

VERSION=v5.6.0
out="$DOCKYARD_CACHE/compose/$VERSION/docker-compose"
if [[ ! -x $out ]]; then
  src="$DOCKYARD_CACHE/compose/src"
  mkdir -p "$src"
  log "building docker compose $VERSION (about a minute warm)"
  # `go install ...@version` is refused (compose's go.mod has exclude directives): a throwaway
  # module that requires it builds it.
  (cd "$src" && { [[ -f go.mod ]] || go mod init dockyard-compose-peer >/dev/null 2>&1; } &&
    go get "github.com/docker/compose/v5/cmd@$VERSION" >/dev/null 2>&1 &&
    go build -o "$out.tmp" github.com/docker/compose/v5/cmd) || die "building docker compose failed"
  mv "$out.tmp" "$out"
fi
echo "$out"
