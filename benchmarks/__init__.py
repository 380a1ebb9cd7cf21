"""Benchmarks of the deferrable RunComfy provider against its naive alternatives (issue #9).

Entry point: ``uv run --frozen python -m benchmarks.run`` (``--quick`` for a < 3 minute smoke run).
Every measurement that needs a clean process (peak RSS) runs in a child started with
``python -m benchmarks.child``; the emulator, the input-image server and moto each run in their own
process so their CPU and memory never count against the code under test.
"""
