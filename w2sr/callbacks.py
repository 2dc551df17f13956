"""Public ``class_path``s of w2sr's Lightning callbacks, as configs and the README spell them.

The callbacks live in :mod:`w2sr.training.callbacks`; this short module keeps ``w2sr.callbacks.ReasoningAccuracy``,
``w2sr.callbacks.Throughput``, ``w2sr.callbacks.TraceScoreWriter`` and ``w2sr.callbacks.CostMeter`` (from
:mod:`w2sr.runtime.cost`) valid in YAML. Exercised by ``pytest tests/layout/test_public_names.py``.
"""

from w2sr.training.callbacks import CostMeter, ReasoningAccuracy, ReasoningAccuracyMetric, Throughput, TraceScoreWriter

__all__ = ["CostMeter", "ReasoningAccuracy", "ReasoningAccuracyMetric", "Throughput", "TraceScoreWriter"]
