"""The federated GNN layer: LightGCN propagation over the clients' collaborative graph."""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Callable, Optional, Tuple

import torch
from torch import Tensor, nn
from torch_geometric.nn.conv.gcn_conv import gcn_norm
from torch_geometric.utils import to_torch_csr_tensor


def csr_matrix(edge_index: Tensor, weight: Tensor, size: Tuple[int, int]) -> Tensor:
    """The sparse CSR matrix with ``weight[e]`` at ``edge_index[:, e]`` (PyG's
    ``to_torch_csr_tensor``, without torch's note that sparse CSR support is in beta)."""
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', UserWarning)
        return to_torch_csr_tensor(edge_index, weight, size)


@dataclass
class CollaborativeGraph:
    """The bipartite user-item graph a server holds: one edge per item a client reported.

    The server builds it only from what clients upload (their item sets, blurred with
    pseudo-items), never from raw interactions; see :mod:`fedgraph.nn.augment` for the views
    the privacy mechanisms produce from it.

    Attributes:
        edge_index: ``[2, E]`` ``(user, item)`` pairs.
        num_users, num_items: the node counts.
    """
    edge_index: Tensor
    num_users: int
    num_items: int
    _adjacency: Optional[Tensor] = field(default=None, init=False, repr=False, compare=False)

    @property
    def num_edges(self) -> int:
        return self.edge_index.size(1)

    def normalized_adjacency(self, device: Optional[torch.device] = None,
                             dtype: Optional[torch.dtype] = None) -> Tensor:
        """:math:`D^{-1/2} A D^{-1/2}` of the undirected graph over nodes ``[users; items]``
        as a sparse CSR tensor on ``device`` in ``dtype`` (default: the default dtype;
        ``gcn_norm`` without self-loops, as PyG's ``LGConv`` normalizes), built on the first
        call and kept: propagating with it is a sparse matrix product, several times faster
        on CPU than message passing over the edge list, which normalizes again at every
        layer."""
        device = torch.device(device if device is not None else 'cpu')
        dtype = dtype or torch.get_default_dtype()
        cached = self._adjacency
        if cached is None or cached.device != device or cached.dtype != dtype:
            num_nodes = self.num_users + self.num_items
            edge_index, weight = gcn_norm(self.homogeneous_edge_index().to(device),
                                          torch.ones(2 * self.num_edges, device=device,
                                                     dtype=dtype),
                                          num_nodes, add_self_loops=False)
            self._adjacency = csr_matrix(edge_index, weight, (num_nodes, num_nodes))
        return self._adjacency

    def homogeneous_edge_index(self) -> Tensor:
        """``[2, 2E]`` undirected edges over nodes ``[users; items]`` (item ``i`` is node
        ``num_users + i``), the layout LightGCN propagates on."""
        user, item = self.edge_index
        item = item + self.num_users
        return torch.stack([torch.cat([user, item]), torch.cat([item, user])])


class FederatedGNN(nn.Module):
    """LightGCN propagation (He et al., SIGIR 2020) over a :class:`CollaborativeGraph`:

    .. math::
        X^{(k+1)} = D^{-1/2} A D^{-1/2} X^{(k)}, \\qquad
        \\bar X = \\frac{1}{K + 1} \\sum_{k=0}^{K} X^{(k)},

    on the stacked user and item embeddings :math:`X^{(0)} = [U; E]`, each layer a product
    with the graph's :meth:`CollaborativeGraph.normalized_adjacency` (what PyG's ``LGConv``
    computes, without normalizing again at every layer). ``num_layers = 0`` returns the
    embeddings unchanged: the PFedRec / FedMF case.

    An optional ``perturb`` callable is applied to each layer's output (SimGCL's noise for
    contrastive views, see :class:`~fedgraph.nn.augment.SimGCLNoise`).
    """

    def __init__(self, num_layers: int = 2):
        super().__init__()
        if num_layers < 0:
            raise ValueError(f'num_layers must be >= 0, got {num_layers}')
        self.num_layers = num_layers

    def forward(self, user: Tensor, item: Tensor, graph: Optional[CollaborativeGraph],
                perturb: Optional[Callable[[Tensor], Tensor]] = None) -> Tuple[Tensor, Tensor]:
        """``(user_out, item_out)``: the layer means of the propagated embeddings."""
        if self.num_layers == 0 or graph is None:
            return user, item
        x = torch.cat([user, item])
        adjacency = graph.normalized_adjacency(x.device, x.dtype)
        total = x
        for _ in range(self.num_layers):
            x = adjacency @ x
            if perturb is not None:
                x = perturb(x)
            total = total + x
        total = total / (self.num_layers + 1)
        return total[:user.size(0)], total[user.size(0):]

    @torch.no_grad()
    def context(self, user: Tensor, item: Tensor,
                graph: Optional[CollaborativeGraph]) -> Tuple[Optional[Tensor], Optional[Tensor]]:
        """What the neighbours add to each node: :math:`\\bar X - X^{(0)} / (K + 1)`.

        A client's final vectors are ``ego / (K + 1) + context``; with the context held
        fixed during a round, local training updates the ego embeddings exactly as LightGCN's
        gradient through its layer-0 term. ``None`` without layers or graph.
        """
        if self.num_layers == 0 or graph is None:
            return None, None
        user_out, item_out = self(user, item, graph)
        scale = 1.0 / (self.num_layers + 1)
        return user_out - user * scale, item_out - item * scale
