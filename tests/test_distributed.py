"""Scaling out: `torchrun --nproc_per_node=2 -m llama2_minimal pretrain` (DistributedDataParallel over gloo on
CPU) follows the loss curve of one process with the same global batch."""

import json
import os
import subprocess
import sys


def losses(folder):
    [run] = [p for p in (folder / "ci").iterdir() if p.name.startswith("pretrain-")]
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_follow_the_single_process_loss_curve(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    common = ["-m", "llama2_minimal", "pretrain", "--profile", "ci", "--steps", "20"]
    subprocess.run([sys.executable, *common, "--out", str(tmp_path / "one")], check=True, env=env,
                   capture_output=True, timeout=600)  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517", *common,
         "--out", str(tmp_path / "two")],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "pretrained with 2 process(es)" in result.stdout
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(one) == len(two) == 20
    assert one[-1] < one[0] - 1.0  # it learns
    assert max(abs(a - b) for a, b in zip(one, two)) < 2e-3, (one, two)
