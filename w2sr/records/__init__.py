"""What flows between the stages, and where it is read and written: problems (readers, field maps, hub ids),
prompts (templates, chat rendering), traces (the Trace record and the W2SR / -P / -N variants), jsonl (atomic,
crash-safe JSON Lines and the input errors every stage raises) and benchmarks (the registry).

A leaf: nothing here imports torch or Lightning (``pytest tests/layout/test_layout.py`` checks it).
"""
