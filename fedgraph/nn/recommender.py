"""The federated recommender: a shared item table and a private per-client score head."""
from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import Tensor, nn

from fedgraph.nn.heads import ScoreHead


class FederatedRecommender(nn.Module):
    """A model whose item embedding table :math:`E \\in \\mathbb{R}^{I \\times d}` is shared
    across clients and whose score head is private to each client:

    .. math::
        \\hat y_{ci} = \\sigma\\big(f_{\\theta_c}(e_i)\\big).

    With :class:`~fedgraph.nn.heads.LinearScoreHead` this is PFedRec's on-device model; with
    :class:`~fedgraph.nn.heads.DotProductHead` it is federated matrix factorization. It is the
    zero-layer case of the federated graph model: no propagation, the head's private
    parameters stand where a graph model has its user node.

    A graph model adds what the federated GNN layer propagates from the neighbours of each
    node as a *context* held fixed during a round (:meth:`set_context`): the vectors that
    meet in the score are

    .. math::
        \\tilde u_c = \\frac{u_c}{K + 1} + \\bar u_c^{\\mathrm{ctx}}, \\qquad
        \\tilde e_i = \\frac{e_i}{K + 1} + \\bar e_i^{\\mathrm{ctx}},

    LightGCN's layer mean with the ego term trainable (see
    :meth:`~fedgraph.nn.gnn.FederatedGNN.context`). Without context (``K = 0``) the vectors
    are the embeddings themselves: PFedRec and FedMF exactly.

    The model *declares* which parameters are shared and which are private: the item table is
    a row table that clients fine-tune locally and the server aggregates row by row; the
    head's dense shared parameters (:meth:`shared_dense`, e.g. an MLP) are averaged whole;
    the head's private parameters (:meth:`private_parameters`, stacked over clients) are
    never uploaded. The engine reads these declarations and hard-codes none of them.

    Args:
        num_items: the item catalogue size :math:`I`.
        head: the private score heads of all clients.
        init_std: the standard deviation of the item table's normal initialization
            (``nn.Embedding``'s default of 1, as in the PFedRec code).
    """

    def __init__(self, num_items: int, head: ScoreHead, init_std: float = 1.0,
                 generator: Optional[torch.Generator] = None):
        super().__init__()
        self.num_items = num_items
        self.dim = head.dim
        self.init_std = init_std
        self.item = nn.Parameter(torch.empty(num_items, head.dim))
        self.head = head
        self.num_layers = 0
        self.user_context: Optional[Tensor] = None
        self.item_context: Optional[Tensor] = None
        self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator: Optional[torch.Generator] = None) -> None:
        self.item.copy_(torch.randn(self.num_items, self.dim, generator=generator)
                        * self.init_std)

    @property
    def num_clients(self) -> int:
        return self.head.num_clients

    def shared_dense(self) -> Dict[str, Tensor]:
        """The dense shared parameters (the head's), averaged by FedAvg."""
        return self.head.shared_parameters()

    def dense_bytes(self) -> int:
        """Bytes of one client's copy of the dense shared parameters."""
        return sum(value.numel() * value.element_size() for value in self.shared_dense().values())

    def shared_numel(self) -> int:
        """Coordinates of the shared parameters: the item table and the dense ones."""
        return self.item.numel() + sum(value.numel() for value in self.shared_dense().values())

    def private_parameters(self) -> Dict[str, Tensor]:
        """The private per-client tensors, each ``[num_clients, ...]``."""
        return self.head.private_parameters()

    def set_context(self, num_layers: int, user_context: Optional[Tensor],
                    item_context: Optional[Tensor]) -> None:
        """Sets the propagated context of ``num_layers`` GNN layers (``None``: no graph)."""
        self.num_layers = num_layers
        self.user_context, self.item_context = user_context, item_context

    def user_input(self, params: Dict[str, Tensor], clients: Tensor) -> Dict[str, Tensor]:
        """Per-sample private parameters with the head's user vector replaced by
        :math:`\\tilde u_c` (``clients`` gives each sample's client)."""
        if self.user_context is None:
            return params
        name = self.head.user_vector
        params = dict(params)
        params[name] = params[name] / (self.num_layers + 1) + self.user_context[clients]
        return params

    def sample_logits(self, params: Dict[str, Tensor], owner: Tensor, clients: Optional[Tensor],
                      item: Tensor) -> Tensor:
        """``[N]`` logits of the item vectors ``item`` ``[N, d]`` of samples whose parameters
        are at position ``owner[n]`` of the stacked ``params`` (``[B, ...]``) and whose client
        is ``clients[n]`` (needed with a context only)."""
        if self.user_context is None:
            return self.head.grouped_logits(params, owner, item)
        gathered = {name: value.index_select(0, owner) for name, value in params.items()}
        return self.head.logits(self.user_input(gathered, clients), item)

    def client_params(self, clients: Tensor) -> Dict[str, Tensor]:
        """The private parameters of ``clients`` as the score sees them (with context)."""
        params = {name: value[clients] for name, value in self.private_parameters().items()}
        return self.user_input(params, clients)

    def item_input(self, rows: Tensor, items: Tensor) -> Tensor:
        """Item vectors :math:`\\tilde e_i` from item rows (shared or personalized)."""
        if self.item_context is None:
            return rows
        return rows / (self.num_layers + 1) + self.item_context[items]

    def item_table_input(self, table: Tensor) -> Tensor:
        """:meth:`item_input` of a whole ``[I, d]`` table."""
        if self.item_context is None:
            return table
        return table / (self.num_layers + 1) + self.item_context

    def forward(self, client: Tensor, item: Tensor) -> Tensor:
        """``[N]`` logits of ``(client[n], item[n])`` pairs with the shared item table."""
        return self.head.logits(self.client_params(client), self.item_input(self.item[item], item))
