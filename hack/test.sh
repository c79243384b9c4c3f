#!/usr/bin/env bash
# The test command: installs what is missing, starts Docker (the control plane is started by the
# test session itself and reused), then runs the whole suite, end-to-end tests included.
# Extra arguments go to pytest (e.g. `bash hack/test.sh -k planner`). Two pytest-xdist workers
# by default (each with its own operator and namespaces); DOCKYARD_TEST_WORKERS=0 runs serially.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

bash "$HACK_DIR/setup.sh"
bash "$HACK_DIR/docker-up.sh"
[[ -f "$HACK_DIR/stemcell.sh" ]] && bash "$HACK_DIR/stemcell.sh"
cd "$REPO_ROOT"
exec "$REPO_ROOT/.venv/bin/pytest" -p no:cacheprovider -n "${DOCKYARD_TEST_WORKERS:-2}" "$@"
