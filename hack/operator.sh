#!/usr/bin/env bash
# Run the operator as the local stack does (hack/up.sh runs it in the background): the local
# provider, metrics, and the validating admission webhook served on the loopback, where the
# local apiserver calls it (kopf writes the ValidatingWebhookConfiguration and empties it on exit).
# Extra arguments go to `dockyard run` (e.g. --namespace 'team-*' --metrics-port 0).
# DOCKYARD_WEBHOOK_PORT (default 9443) and DOCKYARD_WEBHOOK_CONFIGURATION may be set.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

export DOCKYARD_WEBHOOK_PORT="${DOCKYARD_WEBHOOK_PORT:-9443}"
export DOCKYARD_WEBHOOK_ADDR="${DOCKYARD_WEBHOOK_ADDR:-127.0.0.1}"
exec "$REPO_ROOT/.venv/bin/dockyard" run "$@"
