#!/usr/bin/env bash
# Remove everything Dockyard's local provider made on this host: VMs, their volumes, networks,
# disk mounts, loop devices and state folders. For developers and CI; never for VMs you keep.
#   hack/local-cleanup.sh            every root found (labels, loop devices, /var/lib/dockyard/local)
#   hack/local-cleanup.sh ROOT...    only these provider roots
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

"$REPO_ROOT/.venv/bin/python" - "$@" <<'PY'
import sys

from dockyard.providers.local.cleanup import purge

left = purge(sys.argv[1:])
print("\n".join(left) if left else "nothing left", file=sys.stderr)
sys.exit(1 if left else 0)
PY
