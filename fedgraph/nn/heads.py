"""Private per-client score functions, stored stacked: row ``c`` of every tensor is client
``c``'s own parameters, and a batch of samples gathers the rows of its owners.

A head maps a client's private parameters and an item vector :math:`e_i` to a logit
:math:`s_{ci}`; the predicted preference is :math:`\\sigma(s_{ci})`.
"""
from __future__ import annotations

import math
from typing import Dict, Optional

import torch
from torch import Tensor, nn


class ScoreHead(nn.Module):
    """Base class: ``num_clients`` stacked private parameter sets of one score function.

    ``user_vector`` names the private parameter that plays the part of the user node in a
    graph model (PFedRec's head weight, MF's user embedding).
    """

    user_vector: str = ''

    def __init__(self, num_clients: int, dim: int):
        super().__init__()
        self.num_clients = num_clients
        self.dim = dim

    def private_parameters(self) -> Dict[str, Tensor]:
        """The stacked private tensors, each ``[num_clients, ...]``, by name."""
        return dict(self.named_parameters())

    def logits(self, params: Dict[str, Tensor], item: Tensor) -> Tensor:
        """``[N]`` logits of items ``item`` ``[N, d]`` under per-sample parameters ``params``
        (each ``[N, ...]``, gathered from the stacked tensors)."""
        raise NotImplementedError

    def logits_all(self, params: Dict[str, Tensor], items: Tensor) -> Tensor:
        """``[B, I]`` logits of every item ``items`` ``[I, d]`` for ``B`` clients' ``params``."""
        raise NotImplementedError


class LinearScoreHead(ScoreHead):
    """PFedRec's score function (Zhang et al., IJCAI 2023): a private ``Linear(d, 1)``,

    .. math::
        s_{ci} = w_c^\\top e_i + b_c ,

    with no user embedding. As in the reference code every client starts from the same
    initial head (one ``nn.Linear`` initialization, copied to all clients).
    """

    user_vector = 'weight'

    def __init__(self, num_clients: int, dim: int, generator: Optional[torch.Generator] = None):
        super().__init__(num_clients, dim)
        self.weight = nn.Parameter(torch.empty(num_clients, dim))
        self.bias = nn.Parameter(torch.empty(num_clients))
        self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator: Optional[torch.Generator] = None) -> None:
        # nn.Linear's default initialization, U(-1/sqrt(d), 1/sqrt(d)), drawn once.
        bound = 1.0 / math.sqrt(self.dim)
        init = torch.rand(self.dim + 1, generator=generator) * 2 * bound - bound
        self.weight.copy_(init[:self.dim].expand(self.num_clients, -1))
        self.bias.fill_(float(init[self.dim]))

    def logits(self, params: Dict[str, Tensor], item: Tensor) -> Tensor:
        return (params['weight'] * item).sum(dim=-1) + params['bias']

    def logits_all(self, params: Dict[str, Tensor], items: Tensor) -> Tensor:
        return params['weight'] @ items.t() + params['bias'].unsqueeze(1)


class DotProductHead(ScoreHead):
    """Matrix factorization's score function (FedMF; Chai et al., 2020): a private user
    embedding :math:`u_c` and :math:`s_{ci} = u_c^\\top e_i`. Initialized
    :math:`\\mathcal{N}(0, \\sigma^2)` per client."""

    user_vector = 'user'

    def __init__(self, num_clients: int, dim: int, std: float = 1.0,
                 generator: Optional[torch.Generator] = None):
        super().__init__(num_clients, dim)
        self.std = std
        self.user = nn.Parameter(torch.empty(num_clients, dim))
        self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator: Optional[torch.Generator] = None) -> None:
        self.user.copy_(torch.randn(self.num_clients, self.dim, generator=generator) * self.std)

    def logits(self, params: Dict[str, Tensor], item: Tensor) -> Tensor:
        return (params['user'] * item).sum(dim=-1)

    def logits_all(self, params: Dict[str, Tensor], items: Tensor) -> Tensor:
        return params['user'] @ items.t()
