#!/bin/bash
# Workers of one Optuna study under SLURM: a job array whose tasks each run trials of the same study (one GPU
# each) until it holds hydra.sweeper.n_trials, through a database that every node reaches. Submit from the
# project folder, on a filesystem the nodes share (the trials' folders go to multirun/<study>/):
#   export OPTUNA_STORAGE=postgresql://USER:PASSWORD@HOST:5432/DB    # docs/tracking.md: one PostgreSQL database
#   sbatch --array=0-7 scripts/sweep_slurm.sh hparams_search=modern [hydra.sweeper.n_trials=64] [overrides...]
# More tasks, or a second sbatch later, join the same study; a task killed mid-trial leaves a trial that the
# others mark failed and run again. Compute nodes often have no internet: pass data.path=...
#SBATCH --job-name=char-gpt-sweep
#SBATCH --array=0-3
#SBATCH --ntasks=1
#SBATCH --gpus=1
#SBATCH --cpus-per-task=8
#SBATCH --time=08:00:00
#SBATCH --output=slurm-%A_%a.out
set -euo pipefail

: "${OPTUNA_STORAGE:?set OPTUNA_STORAGE to a database every node reaches, e.g. postgresql://USER@HOST/DB}"
python train.py -m hydra.sweeper.storage="$OPTUNA_STORAGE" "$@"
