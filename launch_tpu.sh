#!/usr/bin/env bash
# Create a Cloud TPU VM (or pod slice), ship this repository to every worker, install it,
# and run one scripts/*.py command on all workers.  See docs/tpu.md.
set -euo pipefail

PROG=launch_tpu.sh
GCLOUD=${GCLOUD:-gcloud}
# The '~' in these is expanded by the remote shell, not here.
# shellcheck disable=SC2088
REMOTE_DIR='~/compdiff'
REMOTE_TAR='compdiff-src.tar.gz'  # relative to the remote home directory
# shellcheck disable=SC2088
LOG='~/compdiff_run.log'
# shellcheck disable=SC2088
STATUS='~/compdiff_run.status'
# shellcheck disable=SC2088
PIDFILE='~/compdiff_run.pid'

usage() {
  cat <<'EOF'
Usage: ./launch_tpu.sh --name=NAME --zone=ZONE [options] [-- python scripts/SCRIPT.py ARGS...]

Create a TPU VM or pod slice, copy this repository to every worker, install it with
'python3 -m pip install -U jax[tpu] -e .', and run the command after '--' on all workers.

Required:
  --name=NAME               TPU VM name
  --zone=ZONE               e.g. us-central2-b
  --accelerator-type=TYPE   e.g. v4-8, v4-32 (required unless --reuse or --delete-only)
Options:
  --runtime-version=V       TPU VM runtime (default: tpu-ubuntu2204-base)
  --project=PROJECT         passed as --project=PROJECT to every gcloud call
  --spot | --preemptible    create a spot / preemptible VM
  --reuse                   the VM already exists: skip creation
  --clone=URL[@REF]         git clone URL (and check out REF) on every worker instead of
                            copying a 'git archive' of the local HEAD
  --delete                  delete the VM at the end, also when a step fails
  --delete-only             only delete the VM
  --dry-run                 print the gcloud commands ('+ ' prefixed), run nothing
  -h, --help                this help

Options go before '--': everything after it is the command (a --dry-run there would
be passed to the script, not read here). With --delete, a failed create is followed by
a delete too (a half-created VM is cleaned up; if the create failed because NAME already
existed, that VM is deleted).

The command runs detached (nohup-like) on every worker, in ~/compdiff, writing
~/compdiff_run.log; worker 0's log is streamed here. The exit status is the command's
exit status on worker 0 (then every worker's status is checked). Environment: GCLOUD
names the gcloud binary (default: gcloud).
EOF
}

die() { echo "$PROG: error: $*" >&2; exit 2; }

# Quote one word for a POSIX shell: bare if safe, else single-quoted.
q() {
  if [[ $1 =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}
qall() { local out="" w; for w in "$@"; do out+="$(q "$w") "; done; printf '%s' "${out% }"; }

name="" zone="" accel="" runtime="tpu-ubuntu2204-base" project="" capacity=""
reuse=0 clone="" delete=0 delete_only=0 dry_run=0
cmd=()
while (($#)); do
  case $1 in
    -h|--help) usage; exit 0 ;;
    --name=*) name=${1#*=} ;;
    --zone=*) zone=${1#*=} ;;
    --accelerator-type=*) accel=${1#*=} ;;
    --runtime-version=*) runtime=${1#*=} ;;
    --project=*) project=${1#*=} ;;
    --spot) capacity=--spot ;;
    --preemptible) capacity=--preemptible ;;
    --reuse) reuse=1 ;;
    --clone=*) clone=${1#*=} ;;
    --delete) delete=1 ;;
    --delete-only) delete_only=1 ;;
    --dry-run) dry_run=1 ;;
    --) shift; cmd=("$@"); break ;;
    *) die "unknown flag '$1' (see --help)" ;;
  esac
  shift
done

[[ -n $name ]] || die "missing --name=NAME"
[[ -n $zone ]] || die "missing --zone=ZONE"

common=("--zone=$zone")
[[ -n $project ]] && common+=("--project=$project")

if ((!delete_only)); then
  ((reuse)) || [[ -n $accel ]] || die "missing --accelerator-type=TYPE (or pass --reuse)"
  ((${#cmd[@]})) || die "missing command after '--' (e.g. -- python scripts/train.py ...)"
  # Accept 'python|python3 scripts/X.py ...' or 'scripts/X.py ...'; run with python3, which
  # TPU VM images have ('python' is not installed on tpu-ubuntu2204-base).
  if [[ ${cmd[0]} == python || ${cmd[0]} == python3 ]]; then cmd=("${cmd[@]:1}"); fi
  if ((${#cmd[@]} == 0)) || ! [[ ${cmd[0]} =~ ^scripts/[A-Za-z0-9_]+\.py$ ]]; then
    die "the command must be 'python scripts/<name>.py ...', got: $(qall "${cmd[@]}")"
  fi
  cmd=(python3 "${cmd[@]}")
fi

# Split --clone=URL[@REF]: the part after the last '@' is a ref when it has no ':' and the
# part before it is a whole URL (so git@host:org/repo and https://user@host/repo are URLs).
clone_url=$clone clone_ref=""
if [[ -n $clone && $clone == *@* ]]; then
  head=${clone%@*} tail=${clone##*@}
  if [[ $tail != *:* && ${head#*://} == *[/:]* ]]; then clone_url=$head clone_ref=$tail; fi
fi

# run_step STEP gcloud-args...: print the command; unless --dry-run run it, and on failure
# exit with its status and a message naming the step.
run_step() {
  local step=$1; shift
  local full=("$GCLOUD" "$@")
  echo "+ $(qall "${full[@]}")"
  ((dry_run)) && return 0
  local rc=0
  "${full[@]}" || rc=$?
  if ((rc)); then
    echo "$PROG: step '$step' failed (exit $rc)" >&2
    exit "$rc"
  fi
}
tpu=(compute tpus tpu-vm)
ssh_all() { local step=$1; shift; run_step "$step" "${tpu[@]}" ssh "$name" "${common[@]}" --worker=all "--command=$*"; }

deleted=0
delete_vm() {
  ((deleted)) && return 0
  deleted=1
  run_step delete "${tpu[@]}" delete "$name" "${common[@]}" --quiet
}
tmpdir=""
# shellcheck disable=SC2317  # invoked by the EXIT trap
on_exit() {
  local rc=$?
  trap - EXIT
  [[ -n $tmpdir ]] && rm -rf "$tmpdir"
  if ((delete)) && ((!deleted)); then
    ((rc)) && echo "$PROG: deleting $name after the failure" >&2
    (delete_vm) || rc=$?
  fi
  exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if ((delete_only)); then
  delete_vm
  exit 0
fi

# 1. Create.
if ((!reuse)); then
  create=("${tpu[@]}" create "$name" "${common[@]}" "--accelerator-type=$accel" "--version=$runtime")
  [[ -n $capacity ]] && create+=("$capacity")
  run_step create "${create[@]}"
fi

# 2. Copy the code to every worker.
if [[ -n $clone ]]; then
  fetch="rm -rf $REMOTE_DIR && git clone $(q "$clone_url") $REMOTE_DIR"
  [[ -n $clone_ref ]] && fetch+=" && cd $REMOTE_DIR && git checkout $(q "$clone_ref")"
  ssh_all clone "$fetch"
else
  repo=$(git -C "$(dirname "${BASH_SOURCE[0]}")" rev-parse --show-toplevel)
  sha=$(git -C "$repo" rev-parse --short=12 HEAD)
  if ((dry_run)); then
    tarball="${TMPDIR:-/tmp}/compdiff-launch.XXXXXX/compdiff-$sha.tar.gz"
  else
    tmpdir=$(mktemp -d "${TMPDIR:-/tmp}/compdiff-launch.XXXXXX")
    tarball="$tmpdir/compdiff-$sha.tar.gz"
  fi
  echo "# local: git -C $(q "$repo") archive --format=tar.gz -o $tarball HEAD"
  if ((!dry_run)); then
    git -C "$repo" archive --format=tar.gz -o "$tarball" HEAD \
      || { echo "$PROG: step 'archive' failed" >&2; exit 1; }
  fi
  run_step copy "${tpu[@]}" scp "$tarball" "$name:$REMOTE_TAR" "${common[@]}" --worker=all
  ssh_all unpack "rm -rf $REMOTE_DIR && mkdir -p $REMOTE_DIR && tar -xzf $REMOTE_TAR -C $REMOTE_DIR && rm -f $REMOTE_TAR"
fi

# 3. Install.
ssh_all install "cd $REMOTE_DIR && python3 -m pip install -U 'jax[tpu]' -e ."

# 4. Start the command detached on every worker (it survives a dropped connection), then
#    stream worker 0's log until the command ends there; exit with its status.
user_cmd=$(printf '%q ' "${cmd[@]}")
ssh_all start "cd $REMOTE_DIR || exit 1; rm -f $LOG $STATUS $PIDFILE; (trap \"\" HUP; ${user_cmd% }; echo \$? > $STATUS) > $LOG 2>&1 < /dev/null & echo \$! > $PIDFILE"
wait_cmd="tail -n +1 --pid=\"\$(cat $PIDFILE)\" -f"
status_cmd="s=\$(cat $STATUS 2>/dev/null) || { echo \"no exit status in $STATUS on \$(hostname) (killed?)\" >&2; exit 1; }; exit \"\$s\""
run_step run "${tpu[@]}" ssh "$name" "${common[@]}" --worker=0 "--command=$wait_cmd $LOG; $status_cmd"
# 5. Every worker's exit status (waits for workers still running).
ssh_all status "$wait_cmd /dev/null; $status_cmd"

((delete)) && delete_vm
exit 0
