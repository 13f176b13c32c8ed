"""LightGCN's context without a server that holds the collaborative graph.

Over the bipartite graph of users and their items, a LightGCN layer
:math:`X^{(k+1)} = D^{-1/2} A D^{-1/2} X^{(k)}` splits into two halves:

.. math::
    x_u^{(k+1)} = \\sum_{i \\in S_u} \\frac{x_i^{(k)}}{\\sqrt{d_u d_i}}, \\qquad
    x_i^{(k+1)} = \\frac{1}{\\sqrt{d_i}} \\sum_{u \\ni i} \\frac{x_u^{(k)}}{\\sqrt{d_u}}.

A user computes its own half on its device from the item vectors the server broadcasts,
the item degrees :math:`d_i` and its own items :math:`S_u`. An item's half is a sum over
users: each user contributes :math:`x_u^{(k)} / \\sqrt{d_u}` on the rows of its items (zeros
elsewhere, a whole-table vector) and the server receives only the sum, through secure
aggregation (:func:`~fedgraph.privacy.secure_sum.secure_sum`); the degrees :math:`d_i` are
one such sum of the users' item indicators. The server thus holds the item table, the item
degrees and the item vectors of each layer -- sums over all users -- and no user's items.

These sums are released without DP noise: a guarantee of user-level DP covers the
averaged updates of the rounds, not the graph's aggregates (see ``docs/privacy.md``).
"""
from __future__ import annotations

from typing import Callable, Dict, Iterator, Optional, Tuple

import torch
from torch import Tensor
from torch_scatter import scatter

from fedgraph.data.partition import ClientPartition
from fedgraph.nn.gnn import CollaborativeGraph
from fedgraph.privacy.discrete import IntegerEncoding
from fedgraph.privacy.secure_sum import SecAggPlus, SecureSum, secure_sum

#: The bound of a coordinate of a user's contribution to an item sum (propagated embeddings
#: are far smaller).
CONTEXT_BOUND = 16.0


class SecurePropagation:
    """The context of :meth:`FederatedGNN.context <fedgraph.nn.gnn.FederatedGNN.context>`
    computed as the module docstring describes.

    Args:
        clients: the clients' own edges, user ``u`` knowing the edges of ``u`` only: the
            simulation's stand-in for what each device holds; the server never reads it.
        num_layers: :math:`K`.
        protocol: SecAgg+'s settings (its simulated dropouts do not apply here: a client
            absent from a sum would change every item it holds).
        seed: the seed of the sums' keys and roundings.
    """

    def __init__(self, clients: CollaborativeGraph, num_layers: int, protocol: SecAggPlus,
                 seed: int = 0):
        self.clients = clients
        #: Each user's items, grouped by user.
        self.held = ClientPartition.from_edge_index(clients.edge_index, clients.num_users,
                                                    clients.num_items)
        self.num_layers = num_layers
        self.protocol = SecAggPlus(protocol.neighbours, protocol.min_survivors)
        self.encoding = IntegerEncoding.plain(clients.num_users, bound=CONTEXT_BOUND)
        self.generator = torch.Generator().manual_seed(seed)
        #: Called with what the server receives in each sum.
        self.observer: Optional[Callable[[SecureSum], None]] = None
        #: The item degrees :math:`d_i`: the server's first secure sum.
        self.item_degree = self._secure_sum(lambda u: torch.bincount(
            self.held.items_of(u), minlength=clients.num_items)).double()
        self._cache: Dict[int, Tuple[Tensor, Tensor]] = {}

    def _secure_sum(self, contribution: Callable[[int], Tensor]) -> Tensor:
        """The sum over users of ``contribution(u)`` (int64), securely."""
        users = list(range(self.clients.num_users))
        seed = int(torch.randint(1 << 62, (1,), generator=self.generator))

        def answers() -> Iterator[Tuple[int, Tensor]]:
            return ((u, contribution(u).reshape(-1)) for u in users)

        held = secure_sum(self.protocol, answers(), users, seed)
        if self.observer is not None:
            self.observer(held)
        return held.total

    def _item_half(self, user_vectors: Tensor) -> Tensor:
        """:math:`x_i = d_i^{-1/2} \\sum_{u \\ni i} x_u d_u^{-1/2}` over a secure sum."""
        scaled = user_vectors.double() * _inverse_sqrt(self.held.degree).unsqueeze(1)
        num_items, dim = self.clients.num_items, user_vectors.size(1)

        def contribution(u: int) -> Tensor:
            items = self.held.items_of(u)
            table = torch.zeros(num_items, dim, dtype=torch.float64)
            table.index_add_(0, items, scaled[u].expand(items.numel(), dim))
            return self.encoding.encode(table.reshape(-1), self.generator)

        total = self.encoding.decode(self._secure_sum(contribution)).view(num_items, dim)
        return (total * _inverse_sqrt(self.item_degree).unsqueeze(1)).to(user_vectors.dtype)

    def _user_half(self, item_vectors: Tensor) -> Tensor:
        """Every user's :math:`x_u = \\sum_{i \\in S_u} x_i / \\sqrt{d_u d_i}`, each from its
        own items (computed side by side here)."""
        user, item = self.clients.edge_index
        weight = (_inverse_sqrt(self.held.degree)[user]
                  * _inverse_sqrt(self.item_degree)[item]).to(item_vectors.dtype)
        return scatter(item_vectors[item] * weight.unsqueeze(1), user.long(), dim=0,
                       dim_size=self.clients.num_users, reduce='sum')

    @torch.no_grad()
    def context(self, user: Tensor, item: Tensor) -> Tuple[Tensor, Tensor]:
        """``(user_context, item_context)``: :math:`\\bar X - X^{(0)} / (K + 1)` of the user
        vectors ``user`` the server holds and the item table ``item``. An item half whose
        input does not change (the first layer's, of the users' vectors) is summed once."""
        user_total, item_total = user.clone(), item.clone()
        user_layer, item_layer = user, item
        for layer in range(self.num_layers):
            cached = self._cache.get(layer)
            if layer == 0 and cached is not None and torch.equal(cached[0], user_layer):
                item_next = cached[1]
            else:
                item_next = self._item_half(user_layer)
                if layer == 0:
                    self._cache[0] = (user_layer.clone(), item_next)
            user_layer, item_layer = self._user_half(item_layer), item_next
            user_total, item_total = user_total + user_layer, item_total + item_layer
        scale = 1.0 / (self.num_layers + 1)
        return (user_total - user) * scale, (item_total - item) * scale


def _inverse_sqrt(degree: Tensor) -> Tensor:
    """:math:`d^{-1/2}`, 0 where :math:`d = 0` (as ``gcn_norm``)."""
    out = degree.double().pow(-0.5)
    return out.masked_fill(degree == 0, 0.0)
