"""Benchmark training and sampling: python bench.py [--quick] [--race MODEL ...] [overrides ...] (docs/speed.md).

--help lists the options; the work is in gpt/bench/ (benchmarking.py runs the parts).
"""

from gpt.bench.benchmarking import main

if __name__ == "__main__":
    main()
