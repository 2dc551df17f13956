"""``python -m w2sr.report``: an alias of ``w2sr report`` (the code lives in :mod:`w2sr.evaluation.report`).

Exercised by ``python -m w2sr.report --help``.
"""

from w2sr.evaluation.report import main

if __name__ == "__main__":
    main()
