#!/usr/bin/env bash
# Two processes of one gsc_jax run on this machine's CPU, talking over 127.0.0.1: the
# multi-host code path (jax.distributed, per-process input, global batch norm and metrics,
# checkpoints saved by both) without a cluster.
#
#   launch/local_two_process.sh --config=configs/synthetic.py:15-1 --workdir=runs/two_process
#
# Every argument goes to both processes. Settings (environment variables):
#   PORT     coordinator port on 127.0.0.1 (default: a free port)
#   LOG_DIR  where process_0.log and process_1.log go (default: runs/two_process_logs);
#            each start appends to them
#   PYTHON   the Python that runs gsc_jax (default: python, else python3)
#   GRACE    seconds the other process gets to exit once one has failed, before it is
#            killed (default: 60)
#   QUIET    1: do not show process 0's output here (it is always in its log)
#
# Ctrl-C (SIGINT) or SIGTERM is passed on to both processes once: each saves a checkpoint
# of the same iteration and exits with code 3 (run the same command again to resume); a
# second Ctrl-C stops both at once. The exit code is the first non-zero exit code of the
# two processes, else 0.
set -euo pipefail

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'
}

case "${1:-}" in
  -h | --help)
    usage
    exit 0
    ;;
esac

for arg in "$@"; do
  case "$arg" in
    --distributed | --distributed=* | --nodistributed | --coordinator_address* | --num_processes* | --process_id*)
      echo "error: $arg is set by this script (two processes on 127.0.0.1); remove it" >&2
      exit 2
      ;;
  esac
done

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

if [[ -z "${PYTHON:-}" ]]; then
  if command -v python >/dev/null 2>&1; then PYTHON=python; else PYTHON=python3; fi
fi
LOG_DIR="${LOG_DIR:-runs/two_process_logs}"
GRACE="${GRACE:-60}"
QUIET="${QUIET:-0}"
[[ "$GRACE" =~ ^[0-9]+$ ]] || { echo "error: GRACE must be a number of seconds, not '$GRACE'" >&2; exit 2; }

if [[ -z "${PORT:-}" ]]; then
  PORT="$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
fi
[[ "$PORT" =~ ^[0-9]+$ ]] || { echo "error: PORT must be a port number, not '$PORT'" >&2; exit 2; }

mkdir -p "$LOG_DIR"
# Both on the CPU, one device each.
export JAX_PLATFORMS=cpu

# Job control: each process gets its own process group, so a Ctrl-C in this terminal
# reaches only this script, which passes it on once (not twice) to each process.
set -m

pids=()
codes=("" "")  # exit codes, once known
logs=("$LOG_DIR/process_0.log" "$LOG_DIR/process_1.log")

tail_pid=""
# shellcheck disable=SC2329  # called by the EXIT trap
cleanup() {
  if [[ -n "$tail_pid" ]]; then
    sleep 0.5  # let it show the last lines
    kill "$tail_pid" 2>/dev/null || true
  fi
}
trap cleanup EXIT

forwarded=0
# shellcheck disable=SC2329  # called by the INT and TERM traps
forward() {
  local signal="$1" id
  forwarded=$((forwarded + 1))
  if ((forwarded == 1)); then
    echo "$signal: passing it on to both processes: each saves a checkpoint and exits (code 3); Ctrl-C again stops them at once" >&2
  else
    echo "$signal again: passing it on; both stop at once" >&2
  fi
  for id in "${!pids[@]}"; do
    if [[ -z "${codes[id]}" ]]; then
      kill -s "$signal" "${pids[id]}" 2>/dev/null || true
    fi
  done
}
trap 'forward INT' INT
trap 'forward TERM' TERM

for id in 0 1; do
  cmd=("$PYTHON" -m gsc_jax.main --coordinator_address="127.0.0.1:$PORT" --num_processes=2
    --process_id="$id" "$@")
  printf '==== %s process %s of 2: %s\n' "$(date -u '+%Y-%m-%d %H:%M:%S UTC')" "$id" "${cmd[*]}" >>"${logs[id]}"
done
if [[ "$QUIET" != 1 ]]; then
  echo "showing process 0's output (process 1's is in ${logs[1]})"
  tail -n 0 -f "${logs[0]}" &
  tail_pid=$!
fi
for id in 0 1; do
  cmd=("$PYTHON" -m gsc_jax.main --coordinator_address="127.0.0.1:$PORT" --num_processes=2
    --process_id="$id" "$@")
  "${cmd[@]}" >>"${logs[id]}" 2>&1 </dev/null &
  pids+=("$!")
  echo "process $id: pid $!, log ${logs[id]}"
done
echo "coordinator 127.0.0.1:$PORT; command: ${cmd[*]:0:3} ... --process_id=0|1 $*"

first_code=0
failed_at=""
killed=0
while [[ -z "${codes[0]}" || -z "${codes[1]}" ]]; do
  for id in 0 1; do
    if [[ -z "${codes[id]}" ]] && ! kill -0 "${pids[id]}" 2>/dev/null; then
      code=0
      wait "${pids[id]}" || code=$?
      codes[id]=$code
      echo "process $id exited with code $code"
      if ((code != 0 && first_code == 0)); then
        first_code=$code
        failed_at=$SECONDS
      fi
    fi
  done
  if [[ -n "$failed_at" && "$killed" == 0 ]] && ((SECONDS - failed_at >= GRACE)); then
    for id in 0 1; do
      if [[ -z "${codes[id]}" ]]; then
        echo "process $id still runs ${GRACE}s after the other failed: killing it" >&2
        kill -KILL "${pids[id]}" 2>/dev/null || true
      fi
    done
    killed=1
  fi
  if [[ -z "${codes[0]}" || -z "${codes[1]}" ]]; then
    # In the background, so that a signal's trap runs at once.
    sleep 0.2 &
    wait "$!" || true
  fi
done

if ((first_code != 0)); then
  echo "failed: exit code $first_code (logs: ${logs[0]} ${logs[1]})" >&2
  if ((first_code == 3)); then
    echo "stopped on purpose: run the same command again to resume" >&2
  fi
fi
exit "$first_code"
