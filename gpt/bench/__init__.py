"""Benchmarks: the parts ``python bench.py`` runs (``benchmarking``), each in a module of its own, and the GPU
machine's report that ``scripts/gpu_report.sh`` writes from them (``gpu_report``)."""
