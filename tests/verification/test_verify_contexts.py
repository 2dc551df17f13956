"""verify_completion gives bounded verdicts wherever it runs: DataLoader workers and child processes."""

from __future__ import annotations

import multiprocessing as mp
import time

import pytest
from torch.utils.data import DataLoader, Dataset

from w2sr.verification.grade import VerifyOptions, verify_completion

CASES = [
    ("\\frac{1}{2}", "so \\boxed{0.5}", True),
    ("3", "\\boxed{-3}", False),
    ("7", "\\boxed{10^{10^{10^{10}}}}", False),
]
OPTIONS = VerifyOptions(timeout=2.0)


class Graded(Dataset):
    def __len__(self) -> int:
        return len(CASES)

    def __getitem__(self, index: int) -> bool:
        gold, completion, _ = CASES[index]
        return bool(verify_completion(gold, completion, options=OPTIONS).correct)


def test_inside_dataloader_workers():
    started = time.monotonic()
    loader = DataLoader(Graded(), batch_size=None, num_workers=2)
    assert [bool(v) for v in loader] == [expected for _, _, expected in CASES]
    assert time.monotonic() - started < 60


def _child(queue) -> None:
    queue.put([verify_completion(g, c, options=OPTIONS).correct for g, c, _ in CASES])


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_inside_child_processes(method):
    context = mp.get_context(method)
    queue = context.Queue()
    process = context.Process(target=_child, args=(queue,))
    process.start()
    result = queue.get(timeout=120)
    process.join(timeout=30)
    assert result == [expected for _, _, expected in CASES] and process.exitcode == 0
