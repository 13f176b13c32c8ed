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


@pytest.fixture(scope='session')
def tiny_sampled_split():
    """A small leave-one-out split of synthetic interactions (40 users, 500 items)."""
    from fedgraph.data import leave_one_out_split, synthetic_interactions

    return leave_one_out_split(
        synthetic_interactions(num_users=40, num_items=500, mean_degree=20, seed=2))
