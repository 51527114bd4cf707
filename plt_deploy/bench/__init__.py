"""Benchmark of PLT decoding against vanilla, sequential loops and a Hugging Face peer.

variants.py builds the models, runner.py times them (interleaved), peer.py is the transformers
peer, memory.py the bandwidth floor, targets.py the issue's targets, report.py tables and JSON,
suite.py ties them together in `run_bench`.
"""

from .report import print_report, write_json
from .suite import SCHEMA, run_bench

__all__ = ["SCHEMA", "print_report", "run_bench", "write_json"]
