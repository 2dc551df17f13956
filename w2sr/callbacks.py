"""Public ``class_path``s of w2sr's Lightning callbacks, as configs and the README spell them.

The callbacks live in :mod:`w2sr.training.callbacks`; this short module keeps ``w2sr.callbacks.ReasoningAccuracy``,
``w2sr.callbacks.Throughput`` and ``w2sr.callbacks.TraceScoreWriter`` valid in YAML. Exercised by
``pytest tests/layout/test_public_names.py``.
"""

from w2sr.training.callbacks import ReasoningAccuracy, ReasoningAccuracyMetric, Throughput, TraceScoreWriter

__all__ = ["ReasoningAccuracy", "ReasoningAccuracyMetric", "Throughput", "TraceScoreWriter"]
