"""The device halves of the graph models' steps (FedLightGCN, PerFedRec++): what a device
that holds some users uploads when they enroll and after each round, the context and levels
it scores with, and PerFedRec++'s pre-training steps (:mod:`fedgraph.federated.pretraining`).
The server halves are :class:`~fedgraph.federated.graph.GraphFederatedEngine`'s."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from fedgraph.federated.node import Node, NodeHooks
from fedgraph.federated.engine import FederatedEngine
from fedgraph.federated.graph import GraphFederatedEngine, enrollment_graph, user_upload
from fedgraph.federated.messages import ClientRound, Payload, group, grouped
from fedgraph.federated.pretraining import adam_rows, view_offsets
from fedgraph.nn.augment import PseudoItems
from fedgraph.nn.gnn import CollaborativeGraph, FederatedGNN


class GraphNodeHooks(NodeHooks):
    """The device halves of the graph models' steps: the enrollment upload (items with
    pseudo-items, a first noised user embedding), the user-embedding upload after each
    round, the context and levels to score with, and PerFedRec++'s pre-training (the two
    views' inputs, the Adam step on the server's gradient). A device keeps the sum of the
    embedding changes its users uploaded (``extra['uploaded']``: the server's view of their
    embeddings) and their pre-training Adam state (``extra['adam/*']``).

    Args:
        num_layers: GNN layers.
        pseudo_ratio: pseudo-items a user adds when it enrolls, as a fraction of its items.
        level_weights: the weights of the global, cluster and local scores.
        num_clusters: k of the clustering (0: none).
        pretrain_lr: Adam's learning rate of the users' embeddings in pre-training.
        user_vector: the name of the head's private user vector.
    """

    replies = {'init': ('edge-user', 'edge-item', 'users', 'user-update'),
               'pretrain-views': ('users', 'views'), 'upload-users': ('users', 'user-update')}

    def __init__(self, num_layers: int, pseudo_ratio: float, level_weights: Sequence[float],
                 num_clusters: int = 0, pretrain_lr: float = 0.05, user_vector: str = 'user'):
        self.num_layers = num_layers
        self.pseudo_ratio = pseudo_ratio
        self.level_weights = tuple(level_weights)
        self.num_clusters = num_clusters
        self.pretrain_lr = pretrain_lr
        self.user_vector = user_vector

    def _upload_users(self, node: Node, position: Tensor,
                      streams: Sequence[torch.Generator]) -> Tensor:
        """Users ``position`` upload the change of their embedding since their last upload,
        clipped and noised from ``streams``; returns the uploaded change."""
        uploaded = node.extra['uploaded']
        change = user_upload(node.algorithm.upload_transform(),
                             node.private[self.user_vector][position] - uploaded[position],
                             streams)
        uploaded[position] += change
        return change

    def enroll(self, node: Node, payload: Payload) -> Payload:
        """The users' item sets with pseudo-items (``edge-user``, ``edge-item``) and their
        first noised embedding (``users``, ``user-update``), from their streams of the seed
        ``enroll-seed``."""
        streams = node.streams(int(payload['enroll-seed']))
        graph = enrollment_graph(node.train, PseudoItems(self.pseudo_ratio), streams)
        node.extra['uploaded'] = torch.zeros_like(node.private[self.user_vector])
        change = self._upload_users(node, torch.arange(node.users.numel()), streams)
        return {'edge-user': node.users[graph.edge_index[0]], 'edge-item': graph.edge_index[1],
                'users': node.users, 'user-update': change}

    def configure(self, node: Node, engine: FederatedEngine, payload: Payload,
                  position: Tensor) -> None:
        """The context the server sent for the users at ``position`` and for the items."""
        context = group(payload, 'context')
        if not context:
            return
        user_context = torch.zeros(node.users.numel(), context['user'].size(1),
                                   dtype=context['user'].dtype)
        user_context[position] = context['user']
        engine.model.set_context(self.num_layers, user_context, context['item'])

    def after_train(self, node: Node, position: Tensor, result: ClientRound) -> Payload:
        return {'user-update': self._upload_users(node, position, result.generators)}

    def scorer(self, node: Node, engine: FederatedEngine, payload: Payload):
        """The levels' scores, with the clusters the server sent (``clusters/*``)."""
        empty = CollaborativeGraph(torch.empty(2, 0, dtype=torch.long), node.users.numel(),
                                   node.num_items)
        scorer = GraphFederatedEngine(engine, FederatedGNN(self.num_layers), empty,
                                      self.level_weights, self.num_clusters, propagates=False)
        clusters = group(payload, 'clusters')
        if clusters:
            scorer.assignment, scorer.cluster_tables = clusters['assignment'], clusters['tables']
        return scorer

    def step(self, node: Node, step: str, payload: Payload) -> Payload:
        """``pretrain-views`` (the users' embeddings with the Laplace noise of the two views,
        ``views`` ``[n, 2, d]``), ``pretrain-step`` (one Adam step on the server's
        ``gradient``; users not ``selected`` keep their embedding, their moments move) and
        ``upload-users`` (every user uploads its embedding's change), each from the users'
        streams of the payload's ``seed``."""
        user = node.private[self.user_vector]
        everyone = torch.arange(node.users.numel())
        if step == 'pretrain-views':
            offsets = view_offsets(node.algorithm.upload_transform(), user,
                                   node.streams(int(payload['seed'])))
            return {'users': node.users,
                    'views': (user + offsets).transpose(0, 1).contiguous()}
        if step == 'pretrain-step':
            moments = adam_rows(user, payload['gradient'], payload['selected'],
                                self.pretrain_lr, group(node.extra, 'adam'))
            node.extra.update(grouped('adam', moments))
            return {}
        if step == 'upload-users':
            change = self._upload_users(node, everyone, node.streams(int(payload['seed'])))
            return {'users': node.users, 'user-update': change}
        return super().step(node, step, payload)
