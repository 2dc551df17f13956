"""The RL arm: GRPO as a Lightning module, run by ``w2sr fit --config <an RL config>``.

``model: class_path: w2sr.rl.GRPOStudent`` (the policy; options ``model.rl.*``) and ``data: class_path:
w2sr.rl.ProblemDataModule`` (problems with gold answers). Exercised by ``pytest tests/rl``.
"""

from w2sr.rl.data import ProblemDataModule
from w2sr.rl.module import GRPOStudent
from w2sr.rl.options import RLOptions

__all__ = ["GRPOStudent", "ProblemDataModule", "RLOptions"]
