#!/usr/bin/env bash
# Drive gsc_jax on a Cloud TPU VM pod slice from your own machine with gcloud:
# create the VM, install this repository on every worker, run, follow the logs, stop,
# delete. Run `launch/tpu_vm.sh help` for the subcommands and settings; launch/README.md
# walks through a whole run.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PROG="launch/tpu_vm.sh"
LIBTPU_INDEX="https://storage.googleapis.com/jax-releases/libtpu_releases.html"
METADATA_URL="http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number"

# name|default|meaning (the order of the settings listing)
SETTINGS=(
  "TPU_NAME|gsc-jax|name of the TPU VM"
  "ZONE|us-central2-b|zone of the TPU VM (v4 slices are offered in us-central2-b)"
  "ACCELERATOR_TYPE|v4-16|slice type (v4-16: 8 chips on 2 workers; v4-32: 16 chips on 4)"
  "RUNTIME_VERSION|tpu-ubuntu2204-base|TPU VM image (v4; v5e: v2-alpha-tpuv5-lite)"
  "PROJECT||Google Cloud project (empty: gcloud's configured project)"
  "SPOT|0|1: create a Spot VM (cheaper, can be preempted)"
  "WORKDIR||work dir that every worker reads and writes, gs://BUCKET/PATH (run)"
  "CONFIG|configs/synthetic.py:15-1|config file and argument (run)"
  "REMOTE_DIR|gsc_jax|repository copy on each worker, under its home directory"
  "REMOTE_VENV|gsc_jax_venv|virtual environment on each worker, under its home directory"
  "REMOTE_PYTHON|python3.11|Python the virtual environment is made with (installed with apt if missing)"
  "SSH_FLAGS||extra flags for every gcloud ssh/scp, e.g. --internal-ip or --tunnel-through-iap"
  "GCLOUD|gcloud|the gcloud executable"
  "DRY_RUN|0|1: print the commands instead of running them"
)

die() {
  echo "error: $*" >&2
  exit 2
}

# Fill every unset or empty setting with its default.
for entry in "${SETTINGS[@]}"; do
  IFS='|' read -r name default _ <<<"$entry"
  if [[ -z "${!name:-}" ]]; then
    printf -v "$name" '%s' "$default"
  fi
done

usage() {
  cat <<EOF
usage: $PROG SUBCOMMAND [OPTIONS]

Drives gsc_jax on a Cloud TPU VM pod slice with gcloud. Every subcommand prints each
command it runs (lines starting with '+'); with DRY_RUN=1 it only prints them.

subcommands:
  create [GCLOUD_FLAGS...]   create the TPU VM (extra flags go to 'gcloud ... create',
                             e.g. --service-account=SA or --network=NET)
  install                    copy this repository to every worker and install the pinned
                             requirements plus jax[tpu] (the jax version of requirements.txt)
                             in a virtual environment there
  run [MAIN_FLAGS...]        start 'python -m gsc_jax.main --distributed --config=\$CONFIG
                             --workdir=\$WORKDIR' on every worker at once, detached; each
                             worker logs to ~/gsc_jax_worker<process id>.log. Extra flags
                             go to gsc_jax.main, e.g. --config.optim.batch_size=32.
                             Running it again with the same settings resumes the run.
  logs [--all] [--lines=N]   follow worker 0's log (Ctrl-C stops following, not the run);
                             --all: print the last N lines (default 20) of every worker's log
  stop [--kill] [--grace=S]  send SIGTERM to the gsc_jax processes on every worker: each
                             saves a checkpoint of the same iteration and exits (code 3);
                             waits up to S seconds (default 120) for them to exit; with
                             --kill, sends SIGKILL to what is still running after that
  status                     describe the VM and list the gsc_jax processes of every worker
  ssh [--worker=N]           open a shell on worker N (default 0)
  delete [--yes]             delete the TPU VM (asks first unless --yes); the bucket stays
  help                       this text

settings (environment variables; current values):
EOF
  print_settings --meaning
  cat <<EOF

example (the whole sequence is in launch/README.md):
  export TPU_NAME=gsc-jax ZONE=us-central2-b ACCELERATOR_TYPE=v4-16
  export WORKDIR=gs://MY_BUCKET/runs/synthetic_15-1
  $PROG create && $PROG install && $PROG run && $PROG logs
EOF
}

# The settings and their values; with an argument, also what each one means.
print_settings() {
  local entry name default meaning value note
  for entry in "${SETTINGS[@]}"; do
    IFS='|' read -r name default meaning <<<"$entry"
    value="${!name}"
    if [[ "$value" == "$default" ]]; then note="(default)"; else note="(set)"; fi
    if [[ $# -gt 0 ]]; then
      printf '  %-17s %-28s %-9s %s\n' "$name=" "${value:-(empty)}" "$note" "$meaning"
    else
      printf '  %s=%s %s\n' "$name" "$(quote "$value")" "$note"
    fi
  done
}

# One argument as it would be typed in a shell: bare when that is safe, else single-quoted.
quote() {
  local safe='^[A-Za-z0-9_./:=@%+,-]+$'
  if [[ "$1" =~ $safe ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

quote_all() {
  local first=1 arg
  for arg in "$@"; do
    if ((first)); then first=0; else printf ' '; fi
    quote "$arg"
  done
}

# Print a command, then run it unless DRY_RUN=1.
run_cmd() {
  printf '+ %s\n' "$(quote_all "$@")"
  if [[ "$DRY_RUN" == 1 ]]; then
    return 0
  fi
  "$@"
}

check_settings() {
  [[ "$DRY_RUN" == 0 || "$DRY_RUN" == 1 ]] || die "DRY_RUN must be 0 or 1, not '$DRY_RUN'"
  [[ "$SPOT" == 0 || "$SPOT" == 1 ]] || die "SPOT must be 0 or 1, not '$SPOT'"
  local dir
  for dir in "$REMOTE_DIR" "$REMOTE_VENV"; do
    # Used in 'rm -rf ~/REMOTE_DIR' on the workers: a plain relative path only.
    [[ "$dir" =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)*$ ]] ||
      die "REMOTE_DIR and REMOTE_VENV must be plain paths relative to the home directory, not '$dir'"
  done
  [[ "$REMOTE_PYTHON" =~ ^python[0-9.]*$ ]] || die "REMOTE_PYTHON must look like python3.11, not '$REMOTE_PYTHON'"
}

# Flags every gcloud tpu-vm command takes.
common_flags() {
  FLAGS=(--zone="$ZONE")
  if [[ -n "$PROJECT" ]]; then
    FLAGS+=(--project="$PROJECT")
  fi
}

# common_flags plus SSH_FLAGS, for ssh and scp.
ssh_flags() {
  common_flags
  local extra=()
  if [[ -n "$SSH_FLAGS" ]]; then
    read -r -a extra <<<"$SSH_FLAGS"
    FLAGS+=("${extra[@]}")
  fi
}

# Run a shell script on the workers ($1: all or a worker number). The command is printed
# with the script in a block below it, as the script is long and full of quotes.
ssh_workers() {
  local worker="$1" script="$2"
  ssh_flags
  # shellcheck disable=SC2016  # $SCRIPT is printed as it is, not expanded
  printf '+ %s --command="$SCRIPT"\n' \
    "$(quote_all "$GCLOUD" compute tpus tpu-vm ssh "$TPU_NAME" --worker="$worker" "${FLAGS[@]}")"
  printf '  with SCRIPT:\n'
  printf '%s\n' "$script" | sed 's/^/  | /'
  if [[ "$DRY_RUN" == 1 ]]; then
    return 0
  fi
  "$GCLOUD" compute tpus tpu-vm ssh "$TPU_NAME" --worker="$worker" "${FLAGS[@]}" --command="$script"
}

# The jax version pinned in requirements.txt (jax[tpu] is installed at the same version).
jax_version() {
  local version
  version="$(sed -n -E 's/^jax==([^[:space:]#;]+).*/\1/p' "$REPO_ROOT/requirements.txt" | head -n 1)"
  [[ "$version" =~ ^[0-9][0-9A-Za-z.+-]*$ ]] || die "no 'jax==VERSION' line in $REPO_ROOT/requirements.txt"
  printf '%s' "$version"
}

# Shell lines that set $worker to this worker's number, which is also its JAX process id.
WORKER_ID_LINES="worker=\$(curl -s -f -m 5 -H 'Metadata-Flavor: Google' $METADATA_URL 2>/dev/null || hostname)"

# Shell lines that set $pids to the gsc_jax processes that are not children of another
# one, and $all to every gsc_jax process (commands run by python with '-m gsc_jax.main').
FIND_LINES=$(cat <<'EOF'
list=$(ps -eo pid=,ppid=,comm=,args= | awk '$3 ~ /^python/ && / -m gsc_jax[.]main/ { print $1, $2 }')
all=$(printf '%s\n' "$list" | awk 'NF { print $1 }' | tr '\n' ' ' | sed 's/ $//')
pids=$(printf '%s\n' "$list" | awk 'NF { parent[$1] = $2 } END { for (p in parent) if (!(parent[p] in parent)) print p }' | tr '\n' ' ' | sed 's/ $//')
EOF
)

cmd_create() {
  common_flags
  local args=(compute tpus tpu-vm create "$TPU_NAME" "${FLAGS[@]}"
    --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION")
  if [[ "$SPOT" == 1 ]]; then
    args+=(--spot)
  fi
  run_cmd "$GCLOUD" "${args[@]}" "$@"
  echo "next: $PROG install"
}

cmd_install() {
  [[ $# -eq 0 ]] || die "install takes no arguments (got: $*)"
  local version tarball tmp=""
  version="$(jax_version)"
  if [[ "$DRY_RUN" == 1 ]]; then
    tarball="${TMPDIR:-/tmp}/gsc_jax_src.tar.gz"
  else
    tmp="$(mktemp -d)"
    # shellcheck disable=SC2064  # expand now: tmp is local
    trap "rm -rf '$tmp'" EXIT
    tarball="$tmp/gsc_jax_src.tar.gz"
  fi
  echo "packing $REPO_ROOT (without .git, runs/, data/, caches) into $tarball"
  run_cmd tar -czf "$tarball" -C "$REPO_ROOT" --exclude=./.git --exclude=./runs --exclude=./data \
    --exclude=./data_out --exclude=./.venv --exclude=__pycache__ --exclude='*.pyc' \
    --exclude=.pytest_cache .
  echo "copying it to every worker of $TPU_NAME"
  ssh_flags
  run_cmd "$GCLOUD" compute tpus tpu-vm scp "$tarball" "$TPU_NAME:gsc_jax_src.tar.gz" --worker=all \
    "${FLAGS[@]}"
  echo "unpacking into ~/$REMOTE_DIR and installing requirements.txt + jax[tpu]==$version into ~/$REMOTE_VENV on every worker"
  local script
  script="$(cat <<EOF
set -eu
$WORKER_ID_LINES
dir="\$HOME/$REMOTE_DIR"
venv="\$HOME/$REMOTE_VENV"
rm -rf "\$dir"
mkdir -p "\$dir"
tar -xzf "\$HOME/gsc_jax_src.tar.gz" -C "\$dir"
rm -f "\$HOME/gsc_jax_src.tar.gz"
if ! $REMOTE_PYTHON -c 'import ensurepip' 2>/dev/null; then
  sudo apt-get -o DPkg::Lock::Timeout=600 update -q
  sudo DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q $REMOTE_PYTHON $REMOTE_PYTHON-venv
fi
[ -x "\$venv/bin/python" ] || $REMOTE_PYTHON -m venv "\$venv"
"\$venv/bin/python" -m pip install -q --upgrade pip
"\$venv/bin/python" -m pip install -q -r "\$dir/requirements.txt" "jax[tpu]==$version" -f $LIBTPU_INDEX
echo "worker \$worker: installed \$("\$venv/bin/python" -c 'import jax, jaxlib; print("jax", jax.__version__, "jaxlib", jaxlib.__version__)')"
EOF
)"
  ssh_workers all "$script"
  echo "next: WORKDIR=gs://BUCKET/PATH $PROG run"
}

cmd_run() {
  [[ -n "$WORKDIR" ]] ||
    die "set WORKDIR to the run's work dir, e.g. WORKDIR=gs://MY_BUCKET/runs/synthetic_15-1 (every worker writes there)"
  if [[ "$WORKDIR" != gs://* ]]; then
    echo "warning: WORKDIR=$WORKDIR is not a gs:// path: it must be a directory that every worker sees" >&2
  fi
  local main_args
  main_args="$(quote_all -m gsc_jax.main --distributed --config="$CONFIG" --workdir="$WORKDIR" "$@")"
  # First check every worker, so that the run starts on all of them or on none.
  echo "checking that no worker of $TPU_NAME runs gsc_jax already"
  local check script
  check="$(cat <<EOF
set -eu
$WORKER_ID_LINES
$FIND_LINES
if [ -n "\$all" ]; then
  echo "worker \$worker: a gsc_jax process is still running (pids \$all): '$PROG stop' first" >&2
  exit 1
fi
[ -x "\$HOME/$REMOTE_VENV/bin/python" ] || { echo "worker \$worker: no ~/$REMOTE_VENV: '$PROG install' first" >&2; exit 1; }
EOF
)"
  ssh_workers all "$check"
  echo "starting on every worker of $TPU_NAME: python $main_args"
  script="$(cat <<EOF
set -eu
$WORKER_ID_LINES
cd "\$HOME/$REMOTE_DIR"
log="\$HOME/gsc_jax_worker\$worker.log"
printf '==== %s start: %s\n' "\$(date -u '+%Y-%m-%d %H:%M:%S UTC')" $(quote "python $main_args") >>"\$log"
nohup setsid "\$HOME/$REMOTE_VENV/bin/python" $main_args >>"\$log" 2>&1 </dev/null &
echo "worker \$worker: started (pid \$!), logging to \$log"
EOF
)"
  ssh_workers all "$script"
  echo "follow worker 0: $PROG logs    last lines of every worker: $PROG logs --all"
}

cmd_logs() {
  local all=0 lines="" arg
  for arg in "$@"; do
    case "$arg" in
      --all) all=1 ;;
      --lines=*) lines="${arg#--lines=}" ;;
      *) die "logs: unknown option '$arg' (use --all, --lines=N)" ;;
    esac
  done
  [[ -z "$lines" || "$lines" =~ ^[0-9]+$ ]] || die "logs: --lines needs a number, not '$lines'"
  if ((all)); then
    local script
    script="$(cat <<EOF
$WORKER_ID_LINES
out=\$(for f in "\$HOME"/gsc_jax_worker*.log; do [ -e "\$f" ] || { echo "(no log yet)"; continue; }; echo "== worker \$worker: \$f"; tail -n ${lines:-20} "\$f"; done)
printf '%s\n' "\$out"
EOF
)"
    ssh_workers all "$script"
  else
    echo "following worker 0's log (Ctrl-C stops following; the run goes on)"
    local script
    script="$(cat <<EOF
log=\$(ls -t "\$HOME"/gsc_jax_worker*.log 2>/dev/null | head -n 1)
[ -n "\$log" ] || { echo "no gsc_jax_worker*.log on worker 0 yet" >&2; exit 1; }
echo "== \$log"
tail -n ${lines:-100} -F "\$log"
EOF
)"
    ssh_workers 0 "$script"
  fi
}

cmd_stop() {
  local kill=0 grace=120 arg
  for arg in "$@"; do
    case "$arg" in
      --kill) kill=1 ;;
      --grace=*) grace="${arg#--grace=}" ;;
      *) die "stop: unknown option '$arg' (use --kill, --grace=SECONDS)" ;;
    esac
  done
  [[ "$grace" =~ ^[0-9]+$ ]] || die "stop: --grace needs a number of seconds, not '$grace'"
  echo "sending SIGTERM to the gsc_jax processes on every worker of $TPU_NAME: each saves a"
  echo "checkpoint of the same iteration at its next iteration boundary and exits with code 3;"
  echo "'$PROG run' with the same settings resumes from it."
  if ((kill)); then
    echo "processes still running after ${grace}s get SIGKILL (they save nothing more)."
  else
    echo "waiting up to ${grace}s; add --kill to send SIGKILL to what is still running then."
  fi
  local script
  script="$(cat <<EOF
set -eu
$WORKER_ID_LINES
$FIND_LINES
if [ -z "\$all" ]; then
  echo "worker \$worker: no gsc_jax process"
  exit 0
fi
echo "worker \$worker: SIGTERM to \$pids"
kill -TERM \$pids 2>/dev/null || true
waited=0
while [ "\$waited" -lt $grace ]; do
  $(printf '%s\n' "$FIND_LINES" | sed '2,$s/^/  /')
  [ -n "\$all" ] || break
  sleep 5
  waited=\$((waited + 5))
done
if [ -z "\$all" ]; then
  echo "worker \$worker: stopped after about \${waited}s"
  exit 0
fi
if [ $kill = 1 ]; then
  echo "worker \$worker: still running after ${grace}s: SIGKILL to \$all"
  kill -KILL \$all 2>/dev/null || true
  exit 0
fi
echo "worker \$worker: still running after ${grace}s (pids \$all); '$PROG stop --kill' ends them" >&2
exit 1
EOF
)"
  ssh_workers all "$script"
}

cmd_status() {
  [[ $# -eq 0 ]] || die "status takes no arguments (got: $*)"
  common_flags
  run_cmd "$GCLOUD" compute tpus tpu-vm describe "$TPU_NAME" "${FLAGS[@]}"
  local script
  script="$(cat <<EOF
$WORKER_ID_LINES
$FIND_LINES
log=\$(ls -t "\$HOME"/gsc_jax_worker*.log 2>/dev/null | head -n 1)
last=\$( [ -n "\$log" ] && tail -n 1 "\$log" || echo "(no log)")
if [ -n "\$all" ]; then state="running (pids \$all)"; else state="no gsc_jax process"; fi
printf 'worker %s: %s; last log line: %s\n' "\$worker" "\$state" "\$last"
EOF
)"
  ssh_workers all "$script"
}

cmd_ssh() {
  local worker=0 arg
  for arg in "$@"; do
    case "$arg" in
      --worker=*) worker="${arg#--worker=}" ;;
      *) die "ssh: unknown option '$arg' (use --worker=N)" ;;
    esac
  done
  [[ "$worker" =~ ^[0-9]+$ ]] || die "ssh: --worker needs a worker number, not '$worker'"
  ssh_flags
  run_cmd "$GCLOUD" compute tpus tpu-vm ssh "$TPU_NAME" --worker="$worker" "${FLAGS[@]}"
}

cmd_delete() {
  local yes=0 arg answer=""
  for arg in "$@"; do
    case "$arg" in
      --yes | -y) yes=1 ;;
      *) die "delete: unknown option '$arg' (use --yes)" ;;
    esac
  done
  if ((!yes)); then
    printf 'delete the TPU VM %s in %s? Its disks go with it; the bucket work dir stays. [y/N] ' \
      "$TPU_NAME" "$ZONE"
    read -r answer || true
    if [[ "$answer" != y && "$answer" != yes ]]; then
      echo "not deleted"
      exit 1
    fi
  fi
  common_flags
  run_cmd "$GCLOUD" compute tpus tpu-vm delete "$TPU_NAME" "${FLAGS[@]}" --quiet
}

main() {
  local subcommand="${1:-}"
  if [[ $# -gt 0 ]]; then
    shift
  fi
  case "$subcommand" in
    help | -h | --help)
      usage
      return 0
      ;;
    create | install | run | logs | stop | status | ssh | delete) ;;
    "")
      usage >&2
      echo "error: no subcommand" >&2
      return 2
      ;;
    *)
      usage >&2
      echo "error: unknown subcommand '$subcommand'" >&2
      return 2
      ;;
  esac
  check_settings
  echo "$PROG $subcommand with:"
  print_settings
  if [[ "$DRY_RUN" == 1 ]]; then
    echo "DRY_RUN=1: printing the commands, running none"
  fi
  "cmd_$subcommand" "$@"
}

main "$@"
