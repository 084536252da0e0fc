# Sourced by the training sbatch scripts: run a command so that a coming time limit or a
# preemption ends in a checkpoint, and the job requeues itself to resume.
#
# sbatch asks for `--signal=B:USR1@300`: SLURM signals THIS batch shell 5 minutes ahead. The shell
# must not pass SIGUSR1 to `accelerate launch` (torch's elastic agent dies on it and leaves the
# workers running, never told): each worker writes its pid to $SUMTUNE_PID_DIR, node-local, and
# the trap signals those pids on every node. The workers agree at the next step, checkpoint, exit
# with 75 and leave $SUMTUNE_PID_DIR/preempted; the script then requeues the job (`--requeue`), and
# the requeued job starts with resume=auto. SLURM's own SIGTERM (preemption, scancel, the time
# limit) reaches the workers directly and does the same, within the ~30 s before the launcher
# kills them.

export SUMTUNE_PID_DIR="${SUMTUNE_PID_DIR:-/tmp/sumtune-${SLURM_JOB_ID:-$$}}"

sumtune_forward_usr1() {
    echo "batch shell: SIGUSR1 (time limit near): asking the workers to checkpoint" >&2
    local forward='for f in "$SUMTUNE_PID_DIR"/rank-*.pid; do [ -f "$f" ] && kill -USR1 "$(cat "$f")" 2>/dev/null; done; true'
    if [[ "${SLURM_NNODES:-1}" -gt 1 ]]; then
        srun --overlap --nodes="$SLURM_NNODES" --ntasks-per-node=1 bash -c "$forward" || true
    else
        bash -c "$forward"
    fi
}

# sumtune_run_preemptible CMD...: run CMD in the background (so the trap can run) and wait for it.
sumtune_run_preemptible() {
    rm -rf "$SUMTUNE_PID_DIR"
    trap sumtune_forward_usr1 USR1
    "$@" &
    local child=$! status=0
    # `wait` returns early when a trapped signal arrives: wait again until the command has ended.
    while true; do
        wait "$child" && status=0 || status=$?
        kill -0 "$child" 2>/dev/null || break
    done
    if [[ -f "$SUMTUNE_PID_DIR/preempted" ]]; then
        echo "preempted at step $(cat "$SUMTUNE_PID_DIR/preempted"): checkpoint written; requeueing job ${SLURM_JOB_ID:-?}" >&2
        [[ -n "${SLURM_JOB_ID:-}" ]] && scontrol requeue "$SLURM_JOB_ID"
        return 0
    fi
    return "$status"
}
