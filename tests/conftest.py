"""Fixtures shared by the test modules (helpers that are plain functions: ``helpers.py``)."""
import pytest
import torch


@pytest.fixture
def float64():
    """Runs a test with float64 as the default dtype, restoring the previous one."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)
