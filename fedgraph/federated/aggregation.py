"""Server-side aggregation: row updates into a shared table, dense updates by FedAvg."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def aggregate_rows(table: Tensor, row_item: Tensor, row_owner: Tensor, update: Tensor,
                   num_clients: int, client_weight: Optional[Tensor] = None) -> Tensor:
    """The weighted mean of the clients' tables, computed from the rows they uploaded.

    Client ``c``'s table is ``table + Δ_c`` where ``Δ_c`` is zero outside the rows it
    touched, so the mean of the round's tables is

    .. math::
        E' = E + \\frac{\\sum_c w_c \\Delta_c}{\\sum_c w_c},

    which only needs each client's touched rows: ``update[r]`` is the change of row
    ``row_item[r]`` by client ``row_owner[r]`` (one of ``num_clients``). Without
    ``client_weight`` every client weighs 1 (PFedRec's FedAvg); the weighted variant passes
    the clients' sample counts.
    """
    if client_weight is None:
        total = torch.zeros_like(table).index_add_(0, row_item, update)
        return table + total / num_clients
    weighted = update * client_weight[row_owner].unsqueeze(-1).to(update.dtype)
    total = torch.zeros_like(table).index_add_(0, row_item, weighted)
    return table + total / client_weight.sum().to(table.dtype)


def aggregate_dense(update: Tensor, client_weight: Optional[Tensor] = None) -> Tensor:
    """The FedAvg change of a dense shared parameter: the (weighted) mean over clients of
    their changes ``update`` ``[B, ...]``, :math:`\\sum_c w_c \\Delta_c / \\sum_c w_c`."""
    if client_weight is None:
        return update.mean(0)
    weight = client_weight.to(update.dtype).view(-1, *([1] * (update.dim() - 1)))
    return (update * weight).sum(0) / weight.sum()
