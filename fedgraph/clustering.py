"""Clustering clients with FAISS k-means, cluster-aware client selection, and the cluster
level's item tables (PerFedRec++)."""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from fedgraph.federated.messages import RowUpload
from fedgraph.privacy.gaussian import UserLevelDP


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


def carried_tables(tables: Tensor, before: Tensor, after: Tensor) -> Tensor:
    """The cluster tables ``[k, I, d]`` after the clients moved from clusters ``before`` to
    ``after`` (``[N]`` each): new cluster ``c``'s table is the mean of its members' previous
    cluster tables, so that reclustering keeps what the clusters learned."""
    num_clusters = tables.size(0)
    overlap = torch.zeros(num_clusters, num_clusters, dtype=torch.float64)
    overlap.index_put_((after, before), torch.ones(after.numel(), dtype=torch.float64),
                       accumulate=True)
    overlap /= overlap.sum(1, keepdim=True).clamp_min(1)
    flat = tables.reshape(num_clusters, -1)
    return (overlap.to(flat.dtype) @ flat).view_as(tables)


def cluster_means(base: Tensor, upload: RowUpload, update: Tensor, cluster: Tensor,
                  num_clusters: int, privacy: Optional[UserLevelDP] = None,
                  generator: Optional[torch.Generator] = None) -> Tuple[Tensor, Tensor]:
    """Each cluster's FedAvg of a round: the mean of its clients' tables, the table they
    trained from ``base`` ``[I, d]`` plus their row changes ``update`` (row ``r``: client
    ``upload.row_owner[r]``'s change of item ``upload.row_item[r]``; ``cluster[b]``: client
    ``b``'s cluster). With ``privacy`` each cluster's sum carries its own Gaussian noise
    (:meth:`~fedgraph.privacy.gaussian.UserLevelDP.sum_noise`). Returns the tables
    ``[k', I, d]`` of the ``k'`` clusters that had a client, and which those are ``[k]``."""
    num_items = base.size(0)
    members = torch.bincount(cluster, minlength=num_clusters)
    key = cluster[upload.row_owner] * num_items + upload.row_item
    total = torch.zeros(num_clusters * num_items, base.size(1), dtype=base.dtype)
    total.index_add_(0, key, update)
    total = total.view(num_clusters, num_items, -1)
    if privacy is not None:
        for index in torch.nonzero(members).view(-1).tolist():
            total[index] += privacy.sum_noise(base.shape, int(members[index]), generator,
                                              base.dtype)
    active = members > 0
    return base + total[active] / members[active].view(-1, 1, 1), active

