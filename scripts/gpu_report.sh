#!/usr/bin/env bash
# A GPU machine's report in one command: the GPU tests (pytest -m gpu), model=small to the end of its recipe
# (cut to fit a 10-minute budget, and said), DDP on every visible GPU; writes a markdown report.
#   scripts/gpu_report.sh [--out REPORT.md] [--budget-min 10] [--max-steps N] [--max-time-s S] [--tests PATH]
#                         [overrides...]
#   scripts/gpu_report.sh --cpu-smoke data.path=input.txt     # the same pipeline, a tiny model, on the CPU
# The work is in gpt/bench/gpu_report.py (--help lists its options). PYTHON picks the interpreter. It runs from
# any folder (the report and its runs go to outputs/gpu_report/ there): PYTHONPATH names the project folder,
# where the gpt package is, for python -m.
set -euo pipefail
project=$(cd "$(dirname "$0")/.." && pwd)
PYTHONPATH="$project${PYTHONPATH:+:$PYTHONPATH}" exec "${PYTHON:-python}" -m gpt.bench.gpu_report "$@"
