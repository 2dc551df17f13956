"""Verification: a completion's final answer against the gold answer.

extract (the final answer of a completion), gold (per-source normalisation of gold answers), equivalence
(the rewrites applied before math-verify), grade (records -> verdicts, grader presets), pool (killable math-verify
workers with time and memory limits; pool_worker is the worker process), summary (counts and tables) and stage
(``w2sr verify``'s files).

A leaf below the stages that use it: nothing here imports torch or Lightning (``pytest tests/layout/test_layout.py``).
"""
