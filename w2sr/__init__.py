"""w2sr: weak-to-strong reasoning trainer.

A weak teacher writes chain-of-thought traces (``w2sr generate``), the traces are checked against gold answers
(``w2sr verify``), a stronger student is fine-tuned on them (``w2sr fit``) and evaluated (``w2sr evaluate``).
"""

__version__ = "0.1.0"
