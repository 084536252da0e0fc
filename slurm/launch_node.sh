#!/usr/bin/env bash
# One node's share of a multi-node `accelerate launch`. slurm/train_multi_node.sbatch runs it with
# `srun` as ONE task per node; each copy starts this node's NPROC_PER_NODE training processes:
#
#   srun bash slurm/launch_node.sh train/finetune.py --config configs/train/X.yaml [key=value ...]
#
# Everything after the script name goes to the script. Read from this node's environment:
#   SLURM_NODEID      this node's rank in the job (0..N-1), set by srun for each task   (required)
#   SLURM_NNODES      number of nodes in the job                                         (required)
#   MASTER_ADDR       host of node 0, where the process group meets                      (required)
#   MASTER_PORT       port on MASTER_ADDR (default 29500)
#   NPROC_PER_NODE    processes (GPUs) on this node (default: `nvidia-smi -L | wc -l`, or 1)
#   ACCELERATE_CONFIG accelerate config file (default configs/accelerate/multi_node.yaml)
#   DRY_RUN=1         print the accelerate command and exit (to check a job's ranks and sizes)
#
# Why a script and not one long `srun accelerate launch ... --machine_rank $SLURM_NODEID` line in the
# sbatch file: an unescaped $SLURM_NODEID (or $SLURM_PROCID) there is expanded ONCE by the batch
# shell, on the first node, before srun starts any task, so every node gets rank 0 and the job hangs
# or fails at rendezvous. Here the rank is read inside each task, on its own node, so that cannot
# happen. --machine_rank is always passed: without it, accelerate 1.15 with --rdzv_backend c10d
# crashes on `int(None)` (accelerate's own SLURM example omits it).
set -euo pipefail

for var in SLURM_NODEID SLURM_NNODES MASTER_ADDR; do
    if [[ -z "${!var:-}" ]]; then
        echo "launch_node.sh: error: $var is not set (run me with srun inside a SLURM job, one task per node, or export it)" >&2
        exit 2
    fi
done
if [[ $# -eq 0 ]]; then
    echo "launch_node.sh: error: no script given (usage: launch_node.sh train/finetune.py --config FILE [key=value ...])" >&2
    exit 2
fi

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MASTER_PORT="${MASTER_PORT:-29500}"
ACCELERATE_CONFIG="${ACCELERATE_CONFIG:-$root/configs/accelerate/multi_node.yaml}"
if [[ -z "${NPROC_PER_NODE:-}" ]]; then
    NPROC_PER_NODE="$( (nvidia-smi -L 2>/dev/null || true) | grep -c '^GPU' || true)"
    [[ "$NPROC_PER_NODE" =~ ^[1-9][0-9]*$ ]] || NPROC_PER_NODE=1
fi
for var in SLURM_NODEID SLURM_NNODES MASTER_PORT NPROC_PER_NODE; do
    if ! [[ "${!var}" =~ ^[0-9]+$ ]]; then
        echo "launch_node.sh: error: $var must be a whole number, got '${!var}'" >&2
        exit 2
    fi
done

if [[ -x "$root/.venv/bin/accelerate" ]]; then
    accelerate="$root/.venv/bin/accelerate"
else
    accelerate="$(command -v accelerate || true)"
    if [[ -z "$accelerate" ]]; then
        echo "launch_node.sh: error: accelerate not found (no $root/.venv/bin/accelerate and none on PATH)" >&2
        exit 2
    fi
fi

# accelerate's --num_processes is the total over all machines; it divides by --num_machines itself.
cmd=("$accelerate" launch --config_file "$ACCELERATE_CONFIG"
     --num_machines "$SLURM_NNODES" --machine_rank "$SLURM_NODEID"
     --num_processes $((SLURM_NNODES * NPROC_PER_NODE))
     --main_process_ip "$MASTER_ADDR" --main_process_port "$MASTER_PORT")
# LAUNCH_ARGS: extra launcher flags, e.g. "--mixed_precision no" (word-split on purpose).
read -r -a extra <<< "${LAUNCH_ARGS:-}"
cmd+=("${extra[@]}" "$@")
echo "launch_node.sh: node $SLURM_NODEID of $SLURM_NNODES on $(hostname), $NPROC_PER_NODE process(es), rendezvous $MASTER_ADDR:$MASTER_PORT" >&2
if [[ "${DRY_RUN:-0}" == 1 ]]; then
    printf '%q ' "${cmd[@]}"; echo
    exit 0
fi
# exec: the launcher replaces this shell, so SLURM's SIGTERM (time limit, scancel) reaches it
# directly and it forwards it to the workers.
exec "${cmd[@]}"
