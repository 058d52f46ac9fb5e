import os

import pytest
import torch

# DPSCOPE_TEST_DEVICE=cuda runs every exactness test with tensors and layers made on that device
# (torch's default device), so the per-example rules are checked on a GPU as on the CPU.
TEST_DEVICE = os.environ.get("DPSCOPE_TEST_DEVICE", "cpu")


@pytest.fixture(autouse=True)
def float64():
    """Exactness is checked in float64 so that 1e-6 relative error means a real bug."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    torch.set_default_device(TEST_DEVICE)
    yield
    torch.set_default_device("cpu")
    torch.set_default_dtype(old)
