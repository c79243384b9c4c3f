#!/usr/bin/env bash
# Debian's cloud-init, for checking Dockyard's user data (`cloud-init schema`). Prints its path.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

apt_install cloud-init
command -v cloud-init
