#!/usr/bin/env bash
# A GPU machine's report in one command: the GPU tests (pytest -m gpu), model=small to the end of its recipe
# (cut to fit a 10-minute budget, and said), DDP on every visible GPU; writes a markdown report.
#   scripts/gpu_report.sh [--out REPORT.md] [--budget-min 10] [--max-steps N] [--max-time-s S] [--tests PATH]
#                         [overrides...]
#   scripts/gpu_report.sh --cpu-smoke data.path=input.txt     # the same pipeline, a tiny model, on the CPU
# The work is in scripts/gpu_report.py (--help lists its options). PYTHON picks the interpreter.
set -euo pipefail
exec "${PYTHON:-python}" "$(dirname "$0")/gpu_report.py" "$@"
