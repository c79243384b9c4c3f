#!/usr/bin/env bash
# Run benchmarks: brings up what they need (packages, Docker, the control plane, the stemcell,
# the CRDs), runs each bench/<name>.py, prints its JSON and writes bench/results/<name>.json with
# the machine's facts (nproc, memory, kernel, Docker version, date, git commit) added.
#   bash hack/bench.sh                                  container_repair and vm_resurrection
#   bash hack/bench.sh vm_resurrection steady_state     these (any bench/<name>.py)
#   bash hack/bench.sh container_repair -- --kills 10   arguments after -- go to every benchmark
# A benchmark that fails writes no result. Each one removes everything it made, also on Ctrl-C.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

names=() args=()
while (( $# )); do
  if [[ $1 == -- ]]; then shift; args=("$@"); break; fi
  names+=("$1"); shift
done
(( ${#names[@]} )) || names=(container_repair vm_resurrection)
for name in "${names[@]}"; do
  [[ $name =~ ^[a-z][a-z0-9_]*$ && -f "$REPO_ROOT/bench/$name.py" ]] ||
    die "no benchmark bench/$name.py (have: $(cd "$REPO_ROOT/bench" && ls [a-z]*.py | sed 's/\.py$//' | xargs))"
done

bash "$HACK_DIR/setup.sh"
bash "$HACK_DIR/docker-up.sh"
export KUBECONFIG
KUBECONFIG=$(bash "$HACK_DIR/controlplane/up.sh")
bash "$HACK_DIR/stemcell.sh" >/dev/null
kubectl apply -f "$REPO_ROOT/crds/" >/dev/null
kubectl wait --for=condition=Established -f "$REPO_ROOT/crds/" --timeout=60s >/dev/null

mkdir -p "$REPO_ROOT/bench/results"
cd "$REPO_ROOT"
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for name in "${names[@]}"; do
  log "benchmark $name ${args[*]}"
  .venv/bin/python "bench/$name.py" "${args[@]}" >"$out"
  .venv/bin/python - "$out" "bench/results/$name.json" "${args[*]}" <<'PY'
import json, os, subprocess, sys, time
from pathlib import Path

source, target, arguments = sys.argv[1:4]
result = json.loads(Path(source).read_text())

def out(*command):
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    return done.stdout.rstrip()

meminfo = Path("/proc/meminfo").read_text().split("\n", 1)[0].split()
machine = result.get("machine") if isinstance(result.get("machine"), dict) else {}
result["machine"] = {
    **machine,
    "nproc": os.cpu_count(),
    "memory_mib": int(meminfo[1]) // 1024,
    "kernel": os.uname().release,
    "docker": out("docker", "version", "--format", "{{.Server.Version}}"),
    "date": machine.get("date") or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    "git_commit": machine.get("git_commit") or out("git", "rev-parse", "HEAD"),
}
if "operator_changes_not_committed" not in result["machine"]:
    changed = out("git", "status", "--porcelain", "--", "operator").splitlines()
    result["machine"]["operator_changes_not_committed"] = [line[3:] for line in changed]
result["command"] = f"bash hack/bench.sh {Path(target).stem}" + (f" -- {arguments}" if arguments else "")
text = json.dumps(result, indent=2) + "\n"
Path(target).write_text(text)
print(text, end="")
PY
  log "wrote bench/results/$name.json"
done
