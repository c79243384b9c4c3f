#!/usr/bin/env bash
# Remove everything the local provider made under a root (default /var/lib/dockyard/local):
# VMs, their volumes, disk mounts, loop devices and files. For developers and CI, never for prod.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

root="${1:-$DOCKYARD_STATE/local}"
"$REPO_ROOT/.venv/bin/python" - "$root" <<'PY'
import sys
from dockyard.providers import ProviderConfig
from dockyard.providers.local.provider import LocalProvider, leftovers

provider = LocalProvider(ProviderConfig(type="local", options={"root": sys.argv[1]}))
for vm in provider.find_vms({}):
    provider.delete_vm(vm.id)
for disk in provider.find_disks({}):
    provider.delete_disk(disk.id)
left = leftovers(provider)
print("\n".join(left) if left else f"nothing left under {sys.argv[1]}")
sys.exit(1 if left else 0)
PY
