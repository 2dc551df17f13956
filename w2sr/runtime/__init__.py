"""What every stage's process needs around its work: signals (clean stops), quiet (third-party noise and short
``--help``), progress (step progress bars) and preflight (option checks before heavy work).
"""
