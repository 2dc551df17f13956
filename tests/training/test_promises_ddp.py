"""README promise (multi-process): ``val/reasoning_acc`` is a torchmetrics metric reduced over ranks, and each rank
answers its own share of the held-out problems. Checked in two real processes with the gloo backend on the CPU.

(A 2-process ``w2sr fit`` through DDP is tested with the CLI elsewhere; this is the unit-level check of the metric's
reduction and the problem sharding.)
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap

import pytest
from conftest import REPO

pytestmark = pytest.mark.slow  # two processes that import torch and Lightning: about 10 s

SCRIPT = textwrap.dedent("""
    import json, os, sys
    import torch.distributed as dist
    import torch.multiprocessing as mp

    def run(rank, world, port, out):
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
        from w2sr.training.callbacks import ReasoningAccuracy, ReasoningAccuracyMetric

        metric = ReasoningAccuracyMetric()
        metric.update([[True, True, False], [False, None]][rank])  # rank 1's None (gold not parseable) is not scored
        accuracy = float(metric.compute())

        class Data:
            def validation_problems(self):
                return [f"p{i}" for i in range(7)]

        class Trainer:
            global_rank, world_size, datamodule = rank, world, Data()

        share = ReasoningAccuracy(num_problems=5)._problems(Trainer())
        with open(os.path.join(out, f"{rank}.json"), "w") as handle:
            json.dump({"accuracy": accuracy, "share": share}, handle)
        dist.barrier()  # neither rank tears gloo down while the other is still in a collective (SIGABRT otherwise)
        dist.destroy_process_group()
        # the results are written: leave without the interpreter's teardown, where gloo's threads can still abort
        # the process under load ("terminate called without an active exception", seen with two tests at a time)
        os._exit(0)

    if __name__ == "__main__":
        mp.spawn(run, args=(2, int(sys.argv[1]), sys.argv[2]), nprocs=2)
""")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_reasoning_accuracy_is_reduced_over_two_gloo_ranks(tmp_path):
    script = tmp_path / "ranks.py"
    script.write_text(SCRIPT)
    result = subprocess.run(
        [sys.executable, str(script), str(_free_port()), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"{rank}.json").read_text()) for rank in (0, 1)]
    # 2 correct of 4 scored answers over both ranks: 0.5 on every rank (not rank 0's 2/3, not the mean of 2/3 and 0)
    assert [r["accuracy"] for r in ranks] == [0.5, 0.5]
    # the first num_problems held-out problems, split without overlap
    assert ranks[0]["share"] == ["p0", "p2", "p4"] and ranks[1]["share"] == ["p1", "p3"]
