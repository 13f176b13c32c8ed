"""Clustering clients with FAISS k-means, and cluster-aware client selection."""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def kmeans(x: Tensor, num_clusters: int, seed: int = 0, niter: int = 20,
           nredo: int = 5) -> Tensor:
    """``[N]`` cluster of each row of ``x`` ``[N, d]`` by FAISS k-means (``faiss.Kmeans``),
    the best of ``nredo`` random starts."""
    if x.dim() != 2 or x.size(0) < num_clusters:
        raise ValueError(f'need at least {num_clusters} points [N, d], got {tuple(x.shape)}')
    import faiss  # imported on first use: loading it is slow and logs at INFO level

    points = np.ascontiguousarray(x.detach().cpu().numpy().astype(np.float32))
    model = faiss.Kmeans(points.shape[1], num_clusters, niter=niter, nredo=nredo, seed=seed,
                         verbose=False)
    model.train(points)
    _, assignment = model.index.search(points, 1)
    return torch.from_numpy(assignment.reshape(-1).astype(np.int64))


class ClusterSelector:
    """Cluster-aware client selection (PerFedRec++): cluster ``c`` with ``n_c`` of the ``N``
    clients contributes ``floor(n_c / N * count)`` clients drawn uniformly from it, and the
    remaining places go to clients drawn uniformly from everyone not yet chosen."""

    #: Not every set of ``count`` clients is equally likely.
    uniform = False

    def __init__(self, assignment: Tensor, count: int):
        self.assignment = assignment
        self.num_clients = assignment.numel()
        self.count = count

    def __call__(self, generator: torch.Generator) -> Tensor:
        chosen = torch.zeros(self.num_clients, dtype=torch.bool)
        for cluster in torch.unique(self.assignment).tolist():
            members = torch.nonzero(self.assignment == cluster).view(-1)
            share = members.numel() * self.count // self.num_clients
            chosen[members[torch.randperm(members.numel(), generator=generator)[:share]]] = True
        rest = torch.nonzero(~chosen).view(-1)
        missing = self.count - int(chosen.sum())
        chosen[rest[torch.randperm(rest.numel(), generator=generator)[:missing]]] = True
        return torch.nonzero(chosen).view(-1)
