"""Fixtures shared by the test modules (helpers that are plain functions: ``helpers.py``),
and the ``slow`` marker's list."""
import pytest
import torch

# The tests marked ``slow``, by file: a test function's name marks all its instances, a name
# with its parameter id marks that instance. Chosen by measured duration: every test that
# took over 10 s in a full run (`pytest --durations=0` on 2 CPU cores: 642 s of test time, of
# which these took 508 s). `pytest -m "not slow"` leaves them out; plain `pytest` runs them.
SLOW = {
    'test_aggregation.py': {'test_training_under_a_robust_rule_learns[median]'},
    'test_bench.py': {'test_bench_engines_compares_closed_form_autograd_and_client_streams'},
    'test_deployment.py': {'test_server_and_devices_match_the_in_process_engine[perfedrec++]',
                           'test_server_and_devices_match_the_in_process_engine[fedlightgcn]'},
    'test_flower.py': {'test_a_killed_supernode_does_not_stop_the_run',
                       'test_local_deployment_matches_the_in_process_engine_and_counts_its_bytes',
                       'test_flower_simulation_matches_the_in_process_engine',
                       'test_a_supernode_whose_key_was_not_registered_is_refused'},
    'test_notebooks.py': {'test_notebook_executes_and_draws'},
}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Marks the tests of :data:`SLOW` ``slow``, before ``-m`` selects."""
    for item in items:
        names = SLOW.get(item.path.name, ())
        if item.name in names or getattr(item, 'originalname', item.name) in names:
            item.add_marker(pytest.mark.slow)


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
