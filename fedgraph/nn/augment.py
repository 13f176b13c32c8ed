"""Privacy mechanisms as graph and embedding augmentations (PerFedRec++, Luo et al. 2024).

Each privacy mechanism of a federated recommender changes what the server sees, so each is
also a data augmentation, and two independent draws give two views for contrastive learning:

* :class:`ClientDropout` -- client selection: the clients not selected are absent;
* :class:`PseudoItems` -- pseudo-item labelling (FedGNN): each client also reports items it
  never interacted with;
* :class:`~fedgraph.privacy.upload.LaplaceLDP` -- local differential privacy: clipping
  and Laplace noise on anything a client uploads (the
  :class:`~fedgraph.privacy.upload.UploadTransform` of the graph models' uploads);
* :class:`SimGCLNoise` -- SimGCL's uniform noise on propagated embeddings.

Graph augmentations take and return a :class:`~fedgraph.nn.gnn.CollaborativeGraph`; all
randomness comes from the ``torch.Generator`` passed in.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from fedgraph.data.partition import ClientPartition
from fedgraph.privacy.upload import LaplaceLDP
from fedgraph.nn.gnn import CollaborativeGraph
from fedgraph.nn.views import GraphView

__all__ = ['ClientDropout', 'PseudoItems', 'LaplaceLDP', 'SimGCLNoise', 'Compose']


class ClientDropout:
    """Node dropout of clients: each view keeps a random ``1 - rate`` of the clients (all
    their edges) and drops the rest, as client selection does."""

    def __init__(self, rate: float = 0.1):
        if not 0 <= rate < 1:
            raise ValueError(f'rate must be in [0, 1), got {rate}')
        self.rate = rate

    def __call__(self, graph: CollaborativeGraph, generator: torch.Generator) -> CollaborativeGraph:
        return self.view(GraphView(graph), generator).graph()

    def view(self, view: GraphView, generator: torch.Generator) -> GraphView:
        """The call on a :class:`~fedgraph.nn.views.GraphView`: the same draw, the dropped
        clients marked, nothing copied (their extra edges leave the view too)."""
        num_dropped = int(view.num_users * self.rate)
        dropped = torch.zeros(view.num_users, dtype=torch.bool)
        dropped[torch.randperm(view.num_users, generator=generator)[:num_dropped]] = True
        kept = ~dropped if view.kept is None else view.kept.cpu() & ~dropped
        extra = view.extra[:, kept[view.extra[0].cpu()].to(view.extra.device)]
        return view.replace(kept=kept, extra=extra)


class PseudoItems:
    """Edge perturbation by pseudo-item labelling (FedGNN, Wu et al. 2022): every client
    adds ``max(1, floor(ratio * degree))`` distinct items it never interacted with, drawn
    uniformly, so the server cannot tell real interactions from pseudo ones. Clients without
    edges add none."""

    def __init__(self, ratio: float = 0.1):
        if ratio < 0:
            raise ValueError(f'ratio must be >= 0, got {ratio}')
        self.ratio = ratio

    def __call__(self, graph: CollaborativeGraph, generator: torch.Generator) -> CollaborativeGraph:
        return self.view(GraphView(graph), generator).graph()

    def view(self, view: GraphView, generator: torch.Generator) -> GraphView:
        """The call on a :class:`~fedgraph.nn.views.GraphView`: the pseudo-items of its
        clients (drawn against their item sets in the view,
        :meth:`~fedgraph.nn.views.GraphView.user_partition`) join its extra edges."""
        if self.ratio == 0:
            return view
        partition, clients = view.user_partition()
        pseudo = self.pseudo_edges(partition, generator, clients)
        return view.replace(extra=torch.cat([view.extra, pseudo.to(view.extra)], dim=1))

    def pseudo_edges(self, partition: ClientPartition, generator: torch.Generator,
                     clients: Optional[Tensor] = None) -> Tensor:
        """``[2, P]`` the ``(client, pseudo-item)`` pairs of ``clients`` (ascending, each
        with items; default: every client of ``partition`` with items), clients that ask
        for as many drawn together, in increasing order of that count."""
        degree = partition.degree
        if clients is None:
            clients = torch.nonzero(degree > 0).view(-1)
        count = torch.clamp(torch.floor(degree[clients] * self.ratio).long(), min=1)
        count = torch.minimum(count, partition.num_items - degree[clients])
        # The clients of each count, in the order of their ids, from one stable sort.
        order = torch.sort(count, stable=True).indices
        sizes, lengths = torch.unique_consecutive(count[order], return_counts=True)
        edges = [torch.empty(2, 0, dtype=torch.long)]
        for size, group in zip(sizes.tolist(), torch.split(clients[order], lengths.tolist())):
            if size:
                pseudo = partition.sample_negatives(group, size, generator)
                edges.append(torch.stack([group.repeat_interleave(size), pseudo.reshape(-1)]))
        return torch.cat(edges, dim=1)

    def graph_of(self, partition: ClientPartition,
                 generator: torch.Generator) -> CollaborativeGraph:
        """The graph of the clients' edges in ``partition`` followed by their pseudo-items:
        what the call gives for the graph of ``partition.edge_index()``, written into one
        tensor (the edges are not copied once more to be joined), of 32-bit ids while they
        fit."""
        pseudo = (self.pseudo_edges(partition, generator) if self.ratio
                  else torch.empty(2, 0, dtype=torch.long))
        real = partition.num_interactions
        fits = max(partition.num_clients, partition.num_items) < 2 ** 31
        edges = torch.empty(2, real + pseudo.size(1), dtype=torch.int32 if fits else torch.long)
        edges[0, :real] = partition.row
        edges[1, :real] = partition.col
        edges[:, real:] = pseudo
        return CollaborativeGraph(edges, partition.num_clients, partition.num_items)

    def client_items(self, items: Tensor, num_items: int,
                     generator: torch.Generator) -> Tensor:
        """One client's item set followed by its pseudo-items, drawn on its own (what a
        device uploads when it enrolls)."""
        graph = CollaborativeGraph(torch.stack([torch.zeros_like(items), items]), 1, num_items)
        return self(graph, generator).edge_index[1]


class SimGCLNoise:
    """SimGCL's perturbation (Yu et al., SIGIR 2022) of propagated embeddings:

    .. math::
        e' = e + \\epsilon \\, \\mathrm{sign}(e) \\odot \\frac{\\Delta}{\\lVert \\Delta \\rVert_2},
        \\qquad \\Delta \\sim U(0, 1)^d .
    """

    def __init__(self, eps: float = 0.1, generator: Optional[torch.Generator] = None):
        if eps < 0:
            raise ValueError(f'eps must be >= 0, got {eps}')
        self.eps = eps
        self.generator = generator

    #: Rows of a layer's noise :meth:`rows` draws at a time.
    CHUNK_ROWS = 1 << 16

    def __call__(self, x: Tensor) -> Tensor:
        noise = torch.rand(x.shape, generator=self.generator, dtype=x.dtype).to(x.device)
        return self._add(x, noise)

    def rows(self, x: Tensor, nodes: Tensor, num_nodes: int) -> Tensor:
        """The call on a whole ``[num_nodes, d]`` layer, at its rows ``nodes`` (ascending;
        ``x`` holds them): the layer's noise is drawn whole, in chunks of
        :attr:`CHUNK_ROWS` rows (the generator gives the same numbers in chunks as at
        once), and only the rows' is kept."""
        noise = torch.empty(x.shape, dtype=x.dtype)
        nodes = nodes.cpu()
        starts = torch.arange(0, num_nodes + self.CHUNK_ROWS, self.CHUNK_ROWS)
        bounds = torch.searchsorted(nodes, starts).tolist()
        for chunk, start in enumerate(starts[:-1].tolist()):
            drawn = torch.rand((min(self.CHUNK_ROWS, num_nodes - start),) + x.shape[1:],
                               generator=self.generator, dtype=x.dtype)
            low, high = bounds[chunk], bounds[chunk + 1]
            noise[low:high] = drawn[nodes[low:high] - start]
        return self._add(x, noise.to(x.device))

    def _add(self, x: Tensor, noise: Tensor) -> Tensor:
        return x + self.eps * torch.sign(x) * F.normalize(noise, dim=-1)


class Compose:
    """Applies graph augmentations in order."""

    def __init__(self, augmentations: Sequence):
        self.augmentations = list(augmentations)

    def __call__(self, graph: CollaborativeGraph, generator: torch.Generator) -> CollaborativeGraph:
        for augmentation in self.augmentations:
            graph = augmentation(graph, generator)
        return graph

    def view(self, view: GraphView, generator: torch.Generator) -> GraphView:
        """The augmentations' :meth:`view` in order: the call's draws, described as a
        :class:`~fedgraph.nn.views.GraphView` (each augmentation must have one)."""
        for augmentation in self.augmentations:
            view = augmentation.view(view, generator)
        return view
