"""Public ``class_path``s of w2sr's Lightning strategies, as configs and the README spell them.

The strategies live in :mod:`w2sr.training.strategies`; this short module keeps
``w2sr.strategies.W2SRFSDPStrategy`` and ``w2sr.strategies.W2SRDeepSpeedStrategy`` valid in YAML. Exercised by
``pytest tests/layout/test_public_names.py``.
"""

from w2sr.training.strategies import W2SRDeepSpeedStrategy, W2SRFSDPStrategy

__all__ = ["W2SRDeepSpeedStrategy", "W2SRFSDPStrategy"]
