"""The distributed tests spawn their own ranks (tests/distributed/launch.py); the parent uses one thread too."""

import torch

torch.set_num_threads(1)
