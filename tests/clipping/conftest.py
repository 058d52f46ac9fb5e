import pytest
import torch


@pytest.fixture(autouse=True)
def float64():
    """Exactness is checked in float64 so that 1e-6 relative error means a real bug."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)
