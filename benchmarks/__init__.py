"""Benchmarks, run from a checkout (not shipped): ``python -m benchmarks.<name> [--json FILE]``.

Each prints a table and, with ``--json``, writes its figures. They measure on the
machine they run on: compare figures from one run (side by side), not across days.
"""
