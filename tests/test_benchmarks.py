"""The benchmark's own measurements (benchmarks/bench_vs_transformers.py): exact tensor memory, the FLOPs of MFU."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from llama2_minimal.model import ModelArgs, Transformer

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    path = ROOT / "benchmarks" / "bench_vs_transformers.py"
    spec = importlib.util.spec_from_file_location("bench_vs_transformers", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MIB = 2**20


def test_the_tensor_peak_is_the_most_memory_alive_at_once(bench):
    def overlapping():
        a = torch.ones(MIB)  # 4 MiB
        b = torch.ones(2 * MIB)  # 8 MiB while a lives: 12 MiB at once
        del a, b
        c = torch.ones(MIB)  # 4 MiB after both are gone
        del c

    def one_after_the_other():
        a = torch.ones(MIB)
        del a
        b = torch.ones(2 * MIB)
        del b

    assert bench.tensor_peak_bytes(overlapping) == 12 * MIB
    assert bench.tensor_peak_bytes(one_after_the_other) == 8 * MIB
    kept = []
    assert bench.tensor_peak_bytes(lambda: kept.append(torch.ones(MIB))) == 4 * MIB  # alive at the end counts too
    assert bench.tensor_peak_bytes(lambda: kept.clear()) == 0  # freeing what was alive before is not negative peak


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM is Linux's")
def test_the_rss_peak_sees_memory_touched_and_released(bench):
    def touch():
        x = torch.ones(16 * MIB)  # 64 MiB written, so resident
        del x

    assert bench.rss_peak_bytes(touch) >= 60 * MIB


@pytest.mark.parametrize("config", ["tiny", "small", "laptop"])
def test_the_flop_count_uses_every_matrix_product_weight_and_nothing_else(bench, config):
    args = ModelArgs(**bench.CONFIGS[config])
    model = Transformer(args)
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert bench.matmul_parameters(args) == linear
    assert bench.flops_per_token(args, "train") == 6 * linear + 12 * args.n_layers * args.dim * 256
    assert bench.flops_per_token(args, "gen_b1") == 2 * linear + 4 * args.n_layers * args.dim * (16 + 100)
