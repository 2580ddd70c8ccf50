#!/bin/bash
# Data-parallel training on several GPU nodes under SLURM: one task per GPU, started by srun; Lightning reads
# the ranks and the main node's address from SLURM's variables. Submit from the project folder:
#   sbatch scripts/slurm.sh [overrides...]              e.g. sbatch scripts/slurm.sh model=small
#   sbatch --nodes=4 scripts/slurm.sh model=large trainer=fsdp
# Keep --ntasks-per-node equal to --gpus-per-node. Compute nodes often have no internet: pass data.path=...
#SBATCH --job-name=char-gpt
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=4
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=8
#SBATCH --time=04:00:00
#SBATCH --output=slurm-%j.out
set -euo pipefail

# Every task must write to the same run folder: name it after the job, not the time each task starts.
srun python train.py \
    trainer.num_nodes="$SLURM_JOB_NUM_NODES" \
    trainer.devices="$SLURM_NTASKS_PER_NODE" \
    hydra.run.dir="outputs/slurm-$SLURM_JOB_ID" \
    "$@"
