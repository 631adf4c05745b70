#!/usr/bin/env bash
# Train one variant across N local worker processes with tf.distribute's
# MultiWorkerMirroredStrategy, for trying the strategy out on one machine:
#
#   scripts/train-workers.sh 2 baseline
#
# The variant must have `train.strategy: multi_worker_mirrored` in params.yaml
# (e.g. variants.baseline.train.strategy). Each worker gets a TF_CONFIG naming
# all of them on 127.0.0.1; worker 0 is the chief and the only one that writes
# models/<variant>/ and the MLflow run. On several machines, run
# `python -m pipeline.train --variant V` on each with a TF_CONFIG that lists
# every machine's host:port and its own index instead (and the data there too:
# `dvc pull data/prepared`).
#
# Worker logs: .pipeline_state/workers/<variant>/worker-<i>.log
set -euo pipefail
# Run from the project directory (the one with params.yaml), as dvc does.
[ -f params.yaml ] || { echo "error: no params.yaml here: run from the project directory" >&2; exit 2; }

if [ $# -ne 2 ] || ! [[ $1 =~ ^[0-9]+$ ]] || [ "$1" -lt 1 ]; then
  echo "usage: $0 N VARIANT   (N worker processes, N >= 1; VARIANT a key of params.yaml variants)" >&2
  exit 2
fi
n=$1
variant=$2
python=${PYTHON:-$(dirname "$0")/../.venv/bin/python}
[ -x "$python" ] || { echo "error: $python not found: run scripts/bootstrap.sh, or set PYTHON" >&2; exit 2; }

logs=.pipeline_state/workers/$variant
mkdir -p "$logs"
# N free loopback ports, chosen by the OS.
ports=$("$python" - "$n" <<'PY'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks:
    s.close()
PY
)
cluster=$("$python" -c 'import json, sys; print(json.dumps(["127.0.0.1:" + p for p in sys.argv[1:]]))' $ports)

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
}
trap 'cleanup; echo "interrupted: every worker stopped" >&2; exit 130' INT TERM

for ((i = n - 1; i >= 0; i--)); do
  tf_config="{\"cluster\": {\"worker\": $cluster}, \"task\": {\"type\": \"worker\", \"index\": $i}}"
  if [ "$i" -eq 0 ]; then
    echo "==> chief (worker 0 of $n) prints here; the other workers log to $logs/"
    TF_CONFIG=$tf_config "$python" -m pipeline.train --variant "$variant" &
  else
    TF_CONFIG=$tf_config "$python" -m pipeline.train --variant "$variant" >"$logs/worker-$i.log" 2>&1 &
  fi
  pids+=($!)
done

# Wait for all; if one fails, stop the rest (they would wait for it forever).
status=0
remaining=("${pids[@]}")
while [ ${#remaining[@]} -gt 0 ]; do
  still=()
  for pid in "${remaining[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then
      still+=("$pid")
    elif ! wait "$pid"; then
      status=1
    fi
  done
  remaining=("${still[@]}")
  if [ "$status" -ne 0 ]; then
    cleanup
    break
  fi
  [ ${#remaining[@]} -gt 0 ] && sleep 0.5
done
if [ "$status" -ne 0 ]; then
  echo "error: a worker failed; see the output above and $logs/worker-*.log" >&2
fi
exit "$status"
