import os

import pytest
import torch

from llama2_minimal.world import World, WorldConfig

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)  # several workers on 2 cores: oversubscribed threads run 5x slower


@pytest.fixture(scope="session")
def world():
    """A small world for the stage tests (SFT, reward, rejection); test modules with their own `world` override it."""
    return World(WorldConfig(seed=0, n_countries=8, n_people=8))


@pytest.fixture(autouse=True)
def fp32_where_precision_is_auto(monkeypatch):
    """Trainings in the tests resolve precision "auto" to fp32 on every CPU, as on one without bf16: their thresholds
    were set in fp32, and a test must not pass on one machine and fail on another. Tests of bf16 ask for it by name,
    and tests of the choice itself set what the CPU supports."""
    import llama2_minimal.train.loop as loop

    monkeypatch.setattr(loop, "cpu_supports_bf16", lambda cpuinfo=None: False)
