import sys
from pathlib import Path

import pytest
import torch

# Small shared models live in compress_models.py (importlib mode does not put test folders on
# sys.path by itself).
sys.path.insert(0, str(Path(__file__).parent))

from compress_models import SmallCNN, SmallMLP


@pytest.fixture
def cnn() -> SmallCNN:
    torch.manual_seed(0)
    return SmallCNN().eval()


@pytest.fixture
def mlp() -> SmallMLP:
    torch.manual_seed(0)
    return SmallMLP().eval()
