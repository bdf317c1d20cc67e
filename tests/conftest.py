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
