"""The clients' half of a pre-training step: Adam on their embeddings, in place."""
import pytest
import torch

from fedgraph.federated.pretraining import adam_rows


@pytest.mark.parametrize('lr', [0.05, 0.3])
def test_adam_rows_is_torchs_adam_on_the_selected_rows_and_moves_every_rows_moments(lr):
    """Three steps with different clients selected: selected rows equal torch.optim.Adam's
    (whose moments move for every row), the others keep their values; the rows are
    updated in place."""
    generator = torch.Generator().manual_seed(0)
    rows = torch.randn(6, 3, generator=generator)
    reference = torch.nn.Parameter(rows.clone())
    optimizer = torch.optim.Adam([reference], lr=lr)
    state, storage = {}, rows.data_ptr()
    for selected in ([0, 1, 2, 3, 4, 5], [1, 4], [0, 4, 5]):
        gradient = torch.randn(6, 3, generator=generator)
        mask = torch.zeros(6, dtype=torch.bool)
        mask[selected] = True
        before = rows.clone()
        state = adam_rows(rows, gradient, mask, lr, state)
        reference.grad = gradient.clone()
        optimizer.step()
        assert torch.equal(rows[mask], reference.detach()[mask])
        assert torch.equal(rows[~mask], before[~mask])
        with torch.no_grad():  # the reference's unselected rows keep their values too
            reference[~mask] = before[~mask]
        for name in ('exp_avg', 'exp_avg_sq', 'step'):
            assert torch.equal(state[name], optimizer.state[reference][name])
    assert rows.data_ptr() == storage
