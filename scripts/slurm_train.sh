#!/usr/bin/env bash
# train.py on a SLURM cluster: one torchrun per node on several nodes, and a run that outlives its
# time limit and preemption by stopping cleanly, requeueing itself and resuming where it stopped.
#
#   sbatch scripts/slurm_train.sh --exp kl --phi1 kl --phi2 kl        # from the repository's folder;
#   sbatch --nodes 4 --time 12:00:00 scripts/slurm_train.sh ...       # the flags go to train.py, and
#                                                                     # sbatch's own override the lines below
#
# A stop, step by step:
#   1. 5 minutes before the time limit SLURM sends SIGUSR1 to this script (--signal=B:USR1@300;
#      "B:" = the batch shell only, so that this script knows a stop was asked for).
#   2. The trap below passes it to srun, srun to the torchrun of every node, torchrun to every
#      train.py process (--signals-to-handle). SIGTERM (scancel, preemption) takes the same path.
#   3. train.py finishes its iteration, the ranks agree to stop (they compare every 10 steps),
#      rank 0 writes content.pth, and every process exits 75 (train.py's PREEMPTED_EXIT_CODE).
#   4. srun returns. torchrun reports its workers' 75 as a plain failure (1), so a stop is
#      recognised by the signal this script received, or by 75 itself where train.py is started
#      by srun directly. The job is requeued; it runs this same command again, and --resume auto
#      continues from content.pth (the first run, which has none, starts fresh).
# Any other failure (a crash, a diverged run's 3, a dead rank's 4, a user error's 2) ends the job
# without a requeue: rerunning would fail the same way.
#
# 5 minutes leaves the ranks time to agree (10 iterations), to write content.pth and to exit
# before SLURM's SIGKILL; torchrun waits --shutdown-timeout (240 s) for them before its own.
#
#SBATCH --job-name=uotm
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=32
#SBATCH --time=24:00:00
#SBATCH --signal=B:USR1@300
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out
set -uo pipefail
# sbatch runs a copy of this script from its spool folder: the job starts where it was submitted
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"

PREEMPTED=75
GPUS_PER_NODE=${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-4}}
# the first node hosts the rendezvous; the job id names it, so a requeued job meets afresh
MASTER_ADDR=${MASTER_ADDR:-$(scontrol show hostnames "${SLURM_JOB_NODELIST:-}" 2>/dev/null | head -n 1)}
MASTER_PORT=${MASTER_PORT:-29500}
TORCHRUN="${PYTHON:-python} -m torch.distributed.run --nnodes ${SLURM_NNODES:-1} --nproc_per_node $GPUS_PER_NODE
    --rdzv_backend c10d --rdzv_endpoint $MASTER_ADDR:$MASTER_PORT --rdzv_id ${SLURM_JOB_ID:-0}
    --signals-to-handle SIGTERM,SIGINT,SIGUSR1 --shutdown-timeout 240"
# LAUNCH replaces the whole launcher, as in the other scripts (tests print the command with it)
LAUNCH=${LAUNCH:-"srun --kill-on-bad-exit=1 $TORCHRUN"}

stop_requested=0
srun_pid=
forward() {   # bash runs a trap only between commands: srun runs in the background below
    stop_requested=1
    echo "slurm_train.sh: SIG$1 received; asking train.py to save and stop" >&2
    [ -n "$srun_pid" ] && kill -s "$1" "$srun_pid" 2>/dev/null
}
trap 'forward USR1' USR1
trap 'forward TERM' TERM

$LAUNCH train.py --resume auto "$@" &
srun_pid=$!
# a trap interrupts `wait`: wait again until srun has really ended, then read its exit code
while kill -0 "$srun_pid" 2>/dev/null; do
    wait "$srun_pid"
done
wait "$srun_pid"
code=$?

if [ "$code" -eq "$PREEMPTED" ] || { [ "$stop_requested" -eq 1 ] && [ "$code" -ne 0 ]; }; then
    echo "slurm_train.sh: the run saved content.pth and stopped; requeueing job ${SLURM_JOB_ID:-}" >&2
    scontrol requeue "${SLURM_JOB_ID:-}"
    exit 0
fi
exit "$code"
