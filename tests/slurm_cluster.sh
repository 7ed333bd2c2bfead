#!/usr/bin/env bash
# A one-node Slurm cluster of the test's own (munged, slurmctld, slurmd on this machine,
# configured in DIR, on the ports given) runs examples/slurm/fl.sbatch with a server
# and 3 clients; the daemons are stopped whatever happens.  Needs root and Debian's
# slurmctld, slurmd, slurm-client and munge (make deps).  The job's output and the
# federation's files are left in DIR/job.
# usage: tests/slurm_cluster.sh DIR CTLD_PORT SLURMD_PORT FL_PORT BIN_DIR SRC_DIR
set -euo pipefail
dir=$1 ctld_port=$2 slurmd_port=$3 fl_port=$4 bin=$5 src=$6
node=$(hostname -s)
pids=()
# Each daemon also dies with this script (SIGKILL on its parent's death), should the
# script itself be killed before its trap runs.
daemon() { setpriv --pdeathsig KILL "$@" & pids+=($!); }
cleanup() {
  [ -n "${SLURM_CONF:-}" ] && scancel --quiet --full --user=root 2>/dev/null || true
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
  done
}
trap cleanup EXIT
say() { echo "slurm_cluster: $*" >&2; }
# wait_for WHAT CMD...: until CMD succeeds (a daemon that died ends the wait).
wait_for() {
  local what=$1
  shift
  for _ in $(seq 300); do
    "$@" >/dev/null 2>&1 && return 0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null || { say "a daemon died waiting for $what"; tail -n 20 "$dir"/*.log >&2; return 1; }; done
    sleep 0.1
  done
  say "timed out waiting for $what"
  tail -n 20 "$dir"/*.log >&2
  return 1
}

mkdir -p "$dir/state" "$dir/spool" "$dir/munge" "$dir/job"
chmod 700 "$dir/munge"
dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
chmod 600 "$dir/munge/munge.key"
daemon /usr/sbin/munged --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.sock" \
  --pid-file="$dir/munge/munged.pid" --log-file="$dir/munged.log" \
  --seed-file="$dir/munge/seed" --force --foreground
wait_for munged test -S "$dir/munge/munge.sock"

cat >"$dir/slurm.conf" <<CONF
ClusterName=fltest
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/munge.sock
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
SlurmdParameters=config_overrides
NodeName=$node NodeAddr=127.0.0.1 CPUs=8 State=UNKNOWN
PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
export SLURM_CONF=$dir/slurm.conf
daemon /usr/sbin/slurmctld -D -i -f "$SLURM_CONF"
wait_for slurmctld scontrol ping
daemon /usr/sbin/slurmd -D -f "$SLURM_CONF" -N "$node"
wait_for "node $node" bash -c "sinfo -h -N -o '%T' | grep -qx idle"

# The server certificate names this node, where the clients find the server.
"$src/certs/gen.sh" --out "$dir/certs" --clients 3 --quiet "$node"
cd "$dir/job"
export FL_BIN=$bin FL_CERTS=$dir/certs FL_WORK=$dir/job/fl FL_ROUNDS=2 FL_PORT=$fl_port
export FL_DATA=fashion-mnist:train FL_SERVER_ARGS="--model logreg" FL_CLIENT_ARGS="--max-samples 600"
if ! timeout 240 sbatch --wait --time=4 --ntasks=4 --output="$dir/job/job.out" "$src/examples/slurm/fl.sbatch" >"$dir/job/sbatch.out" 2>&1; then
  say "the job failed; its output:"
  cat "$dir/job/sbatch.out" "$dir/job/job.out" "$dir/job/fl/server.log" >&2 || true
  exit 1
fi
cat "$dir/job/job.out"
