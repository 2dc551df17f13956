"""Evaluation (``w2sr evaluate`` and ``w2sr report``): run (benchmarks -> generation -> verification -> metrics ->
results.json), metrics (avg@n, pass@k, maj@k, bootstrap; no torch), answer classes (maj@k's equivalent answers)
and report (tables, gains, RGR, plots).
"""
