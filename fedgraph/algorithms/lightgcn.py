"""Centralized LightGCN (He et al., SIGIR 2020) and SimGCL (Yu et al., SIGIR 2022): the
ceilings of the federated graph models, trained on the pooled interactions with PyG's
:class:`~torch_geometric.nn.models.LightGCN` and its BPR ``recommendation_loss``.

A round is an epoch: every training interaction, each with ``num_negatives`` negatives
drawn uniformly from the user's non-training items, in shuffled mini-batches of
``batch_size``; every mini-batch propagates the whole training graph and takes one Adam step
on

.. math::
    \\mathcal{L} = -\\frac{1}{|B|} \\sum_{(u, i, j) \\in B} \\log \\sigma(s_{ui} - s_{uj})
    + \\frac{\\lambda}{|B|} \\lVert E^{(0)}_B \\rVert^2 ,
    \\qquad s_{ui} = x_u^\\top x_i, \\quad x = \\sum_{k=0}^{K} \\alpha_k X^{(k)},

with :math:`\\alpha_k = 1 / (K + 1)` (LightGCN: the ego layer 0 included) or
:math:`\\alpha_0 = 0, \\alpha_{k \\geq 1} = 1 / K` (``ego_layer=False``: SimGCL, and the
PerFedRec++ code's federated encoder). SimGCL adds
:math:`\\lambda_{cl} (\\mathrm{InfoNCE}(users) + \\mathrm{InfoNCE}(items))` between two
propagations with SimGCL's noise on every layer, over the batch's distinct users and positive
items.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional

import torch
from torch import Tensor
from torch_geometric.nn.models import LightGCN as PyGLightGCN

from fedgraph.algorithms.base import CENTRALIZED_UNUSED, Algorithm, AlgorithmSettings
from fedgraph.algorithms.registry import register
from fedgraph.settings import setting
from fedgraph.data.partition import ClientPartition
from fedgraph.federated.messages import RoundStats
from fedgraph.federated.round_engine import RoundEngine
from fedgraph.nn.augment import SimGCLNoise
from fedgraph.nn.contrastive import info_nce
from fedgraph.nn.gnn import CollaborativeGraph

@dataclass
class LightGCNSettings(AlgorithmSettings):
    """LightGCN's recipe (L2 regularization 1e-4, K = 2 layers with the ego layer, Adam)
    at lr 0.01 (LightGCN's paper: 1e-3; 0.01 reaches the same peak in a tenth of the
    epochs, ``docs/results.md``)."""
    lr: float = setting(0.01, "Adam's learning rate")
    l2_reg: float = setting(1e-4, "L2 regularization of a mini-batch's ego embeddings "
                                  "(PyG's recommendation_loss lambda_reg)")
    num_layers: int = setting(2, 'propagation layers K')
    ego_layer: bool = setting(True, 'average layers 0..K (LightGCN); false: layers 1..K '
                                    '(SimGCL)')

    def validate(self) -> None:
        if self.lr <= 0 or self.l2_reg < 0:
            raise ValueError('lr must be > 0 and l2_reg >= 0')
        if self.num_layers < 0 or (self.num_layers == 0 and not self.ego_layer):
            raise ValueError('num_layers must be >= 0, and >= 1 without the ego layer')


@dataclass
class SimGCLSettings(LightGCNSettings):
    """SimGCL's (its paper's and code's defaults): layers 1..K, lambda 0.5, eps 0.1,
    tau 0.2."""
    ego_layer: bool = False
    cl_weight: float = setting(0.5, 'weight lambda_cl of the InfoNCE loss')
    cl_temperature: float = setting(0.2, 'InfoNCE temperature')
    simgcl_eps: float = setting(0.1, 'SimGCL noise magnitude')

    def validate(self) -> None:
        super().validate()
        if self.cl_weight < 0 or self.cl_temperature <= 0 or self.simgcl_eps < 0:
            raise ValueError('cl_weight and simgcl_eps must be >= 0, cl_temperature > 0')


@register
class LightGCN(Algorithm):
    name = 'lightgcn'
    summary = 'centralized LightGCN on the pooled data (PyG; BPR, Adam): the graph ceiling'
    Settings = LightGCNSettings
    federated = False
    #: LightGCN's mini-batches of 2,048 pairs, each positive with one negative.
    shared_defaults = dict(batch_size=2048, num_negatives=1)
    unused_settings = CENTRALIZED_UNUSED + ('local_epochs',)
    #: Whether the loss adds SimGCL's InfoNCE between noisy views.
    contrastive = False

    def build_engine(self, partition: ClientPartition, generator: torch.Generator,
                     known: Optional[ClientPartition] = None) -> 'CentralizedLightGCN':
        return CentralizedLightGCN(self.config, partition, generator, known, self.contrastive)


@register
class SimGCL(LightGCN):
    name = 'simgcl'
    summary = 'centralized SimGCL: LightGCN + noise-perturbed contrastive views'
    Settings = SimGCLSettings
    contrastive = True


def layer_weights(num_layers: int, ego_layer: bool) -> Tensor:
    """The weights :math:`\\alpha_0, \\dots, \\alpha_K` of the layer mean: ``1 / (K + 1)``
    each, or without the ego layer 0 and ``1 / K`` for the others."""
    if ego_layer:
        return torch.full((num_layers + 1,), 1.0 / (num_layers + 1))
    return torch.tensor([0.0] + [1.0 / num_layers] * num_layers)


class CentralizedLightGCN(RoundEngine):
    """LightGCN (with ``contrastive``: SimGCL, whose settings hold the InfoNCE's) on the
    pooled training graph; see the module docstring for the objective. The embeddings are
    initialized Xavier-uniform, as PyG and the LightGCN code do, from the run's generator."""

    def __init__(self, config, partition: ClientPartition, generator: torch.Generator,
                 known: Optional[ClientPartition] = None, contrastive: bool = False):
        settings = config.settings
        self.config, self.settings = config, settings
        # BPR at s_ui = s_uj; SimGCL's InfoNCE adds a term of its own.
        self.chance_loss = None if contrastive else math.log(2)
        self.partition = partition.to(config.device)
        self.known = (known if known is not None else partition).to(config.device)
        self.num_users = partition.num_clients
        num_nodes = partition.num_clients + partition.num_items
        self.model = PyGLightGCN(num_nodes, config.dim, settings.num_layers,
                                 alpha=layer_weights(settings.num_layers, settings.ego_layer),
                                 normalize=False)
        weight = self.model.embedding.weight
        bound = (6.0 / sum(weight.shape)) ** 0.5
        with torch.no_grad():
            weight.copy_(torch.rand(weight.shape, generator=generator) * 2 * bound - bound)
        self.model.to(config.device)
        self.adjacency = CollaborativeGraph(
            partition.edge_index(), partition.num_clients,
            partition.num_items).normalized_adjacency(config.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=settings.lr)
        self.contrastive = contrastive
        self._final: Optional[Tensor] = None

    @property
    def device(self) -> torch.device:
        return self.model.embedding.weight.device

    def propagate(self, noise: Optional[SimGCLNoise] = None) -> Tensor:
        """``[U + I, d]``: the layer mean :math:`\\sum_k \\alpha_k X^{(k)}`, with ``noise``
        added to every propagated layer (SimGCL's views)."""
        if noise is None:
            return self.model.get_embedding(self.adjacency)
        x = self.model.embedding.weight
        out = x * self.model.alpha[0]
        for alpha, conv in zip(self.model.alpha[1:], self.model.convs):
            x = noise(conv(x, self.adjacency))
            out = out + x * alpha
        return out

    def run_round(self, generator: torch.Generator) -> RoundStats:
        """One epoch of Adam over shuffled mini-batches (see the module docstring)."""
        cfg, part, settings = self.config, self.partition, self.settings
        num = cfg.num_negatives
        user = part.row.repeat_interleave(num)
        positive = part.col.repeat_interleave(num) + self.num_users
        negative = self.known.sample_negatives(part.row, num, generator).reshape(-1) \
            + self.num_users
        order = torch.randperm(user.numel(), generator=generator).to(user.device)
        noise = SimGCLNoise(settings.simgcl_eps, generator) if self.contrastive else None
        total = 0.0
        self.model.train()
        for batch in order.split(cfg.batch_size):
            u, i, j = user[batch], positive[batch], negative[batch]
            x = self.propagate()
            loss = self.model.recommendation_loss(
                (x[u] * x[i]).sum(-1), (x[u] * x[j]).sum(-1),
                node_id=torch.cat([u, i, j]), lambda_reg=settings.l2_reg)
            if self.contrastive:
                loss = loss + settings.cl_weight * self.contrastive_loss(u, i, noise)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            total += float(loss.detach()) * batch.numel()
        self._final = None
        return RoundStats(loss=total / max(user.numel(), 1), num_clients=self.num_users,
                          upload_bytes=0.0, download_bytes=0.0)

    def contrastive_loss(self, users: Tensor, items: Tensor, noise: SimGCLNoise) -> Tensor:
        """InfoNCE between two noisy propagations, over the distinct ``users`` and
        ``items`` (node ids) of a mini-batch."""
        first, second = self.propagate(noise), self.propagate(noise)
        temperature = self.settings.cl_temperature
        return sum(info_nce(first[nodes], second[nodes], temperature)
                   for nodes in (torch.unique(users), torch.unique(items)))

    @torch.no_grad()
    def final(self) -> Tensor:
        """The propagated embeddings ``[U + I, d]`` after the latest epoch."""
        if self._final is None:
            self.model.eval()
            self._final = self.propagate()
        return self._final

    @torch.no_grad()
    def scores(self, users: Tensor, items: Tensor) -> Tensor:
        x = self.final()
        return (x[users].unsqueeze(1) * x[self.num_users + items]).sum(-1)

    @torch.no_grad()
    def scores_all(self, users: Tensor) -> Tensor:
        x = self.final()
        return x[users] @ x[self.num_users:].t()

    def export(self) -> Dict[str, Tensor]:
        """Ego and final embeddings, for plotting."""
        x, ego = self.final(), self.model.embedding.weight.detach()
        split = self.num_users
        return {'user_embedding': ego[:split], 'item_embedding': ego[split:],
                'user_final': x[:split], 'item_final': x[split:]}

    def state_dict(self) -> Dict[str, object]:
        return {'model': self.model.state_dict(), 'optimizer': self.optimizer.state_dict()}

    def load_state_dict(self, state: Dict[str, object]) -> None:
        self.model.load_state_dict(state['model'])
        self.optimizer.load_state_dict(state['optimizer'])
        self._final = None
