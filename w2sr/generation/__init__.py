"""Generation backends: one file per backend behind the small interface in ``base.py``.

``hf.py`` is the batched, left-padded Hugging Face backend; ``toy.py`` the programmatic weak teacher of the embedded
default. ``run.py`` is the stage itself: problems -> prompts -> completions -> trace records.
"""
