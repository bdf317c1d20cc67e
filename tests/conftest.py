import os

import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)  # several workers on 2 cores: oversubscribed threads run 5x slower
