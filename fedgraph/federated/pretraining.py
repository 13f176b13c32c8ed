"""PerFedRec++'s federated contrastive pre-training (Luo et al., ACM TIST 2024, Sec. 4.2),
written once: the server's loop (:func:`pretrain`) and the clients' halves, which hold the
user embeddings -- in this process (:class:`LocalClients`) or on devices behind a transport
(:class:`RemoteClients`, answered by
:meth:`~fedgraph.federated.graph_hooks.GraphNodeHooks.step`). Both halves of a client step
are the same functions (:func:`view_offsets`, :func:`adam_rows`).

Each round draws two views of the collaborative graph -- client dropout and pseudo-items on
the graph, Laplace noise on the uploaded user embeddings, SimGCL noise on every propagated
layer -- and takes one Adam step on ``cl_weight * (InfoNCE(users) + InfoNCE(items))`` over
the round's selected clients and as many random items. The user embeddings enter the views
with the Laplace noise an upload adds (not clipped: clipping a whole embedding, rather than a
change, would shrink it every round); the server steps the item table and hands each client
the gradient of its embedding, which it applies with Adam; a client not selected moves its
moments but keeps its embedding. At the end every client uploads its embedding's change.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
from torch import Tensor
from tqdm import tqdm

from fedgraph.federated.streams import ClientStreams, draw_round_seed
from fedgraph.nn.augment import SimGCLNoise
from fedgraph.nn.contrastive import info_nce
from fedgraph.privacy.upload import UploadTransform


def view_offsets(upload: UploadTransform, users: Tensor,
                 generators: Sequence[torch.Generator]) -> Tensor:
    """``[2, B, d]``: the noise each of ``B`` clients adds to the two uploads of its
    embedding (``users`` ``[B, d]``) that enter a pre-training round's views, drawn from its
    own stream."""
    num, dim = users.shape
    zeros = users.new_zeros(2 * num, dim)
    owner = torch.arange(num).repeat_interleave(2)
    offsets = ClientStreams.transform(upload, zeros, owner, generators)
    return offsets.view(num, 2, dim).transpose(0, 1)


def adam_rows(rows: Tensor, gradient: Tensor, selected: Tensor, lr: float,
              state: Dict[str, Tensor]) -> Tuple[Tensor, Dict[str, Tensor]]:
    """One Adam step of the clients' embeddings ``rows`` ``[n, d]`` on ``gradient``, with
    the moments ``state`` (empty: the first step): every row's moments move, only the
    ``selected`` rows take the step. Returns the new rows and moments."""
    param = torch.nn.Parameter(rows.clone())
    optimizer = torch.optim.Adam([param], lr=lr)
    if state:
        optimizer.state[param] = dict(state)
    param.grad = gradient.to(param.dtype)
    optimizer.step()
    moved = torch.where(selected.unsqueeze(1), param.detach(), rows)
    return moved, {name: value.clone() for name, value in optimizer.state[param].items()}


class PretrainingClients:
    """The clients' halves of a pre-training round, whoever holds their embeddings."""

    def views(self, generator: torch.Generator) -> Callable[[int], Tensor]:
        """View ``v``'s input (every client's embedding with its upload noise) ``[U, d]``,
        a leaf that collects its gradient."""
        raise NotImplementedError

    def step(self, gradient: Tensor, selected: Tensor) -> None:
        """The clients apply ``gradient`` ``[U, d]`` of their embeddings (only ``selected``
        ones move)."""
        raise NotImplementedError

    def upload(self, generator: torch.Generator) -> None:
        """Every client uploads its embedding's change to the server's view."""
        raise NotImplementedError

    def report(self) -> Dict[str, object]:
        """Entries of the pre-training record that need the clients' embeddings."""
        return {}


class _Views:
    """The two views' inputs, made once each as a leaf (``make(v)``), and their summed
    gradient."""

    def __init__(self, make: Callable[[int], Tensor]):
        self.make = make
        self.leaves: Dict[int, Tensor] = {}

    def __call__(self, view: int) -> Tensor:
        if view not in self.leaves:
            self.leaves[view] = self.make(view).detach().requires_grad_()
        return self.leaves[view]

    def gradient(self) -> Tensor:
        return self.leaves[0].grad + self.leaves[1].grad


class LocalClients(PretrainingClients):
    """Clients in this process: the engine's own user table (``graph``: a
    :class:`~fedgraph.federated.graph.GraphFederatedEngine`). Their upload noise comes from
    their streams of a seed drawn from the run's generator, or, without per-client streams,
    from that generator itself, view by view."""

    def __init__(self, graph):
        self.graph = graph
        self.moments: Dict[str, Tensor] = {}

    def views(self, generator: torch.Generator) -> Callable[[int], Tensor]:
        graph = self.graph
        user, upload = graph.user_table.detach(), graph.training.upload
        if graph.engine.streams is None:
            return _Views(lambda view: user + upload(torch.zeros_like(user), generator))
        offsets = view_offsets(upload, user, graph.randomness_for_all(graph.engine, generator))
        return _Views(lambda view: user + offsets[view])

    def step(self, gradient: Tensor, selected: Tensor) -> None:
        user = self.graph.user_table
        moved, self.moments = adam_rows(user.detach(), gradient, selected,
                                        self.graph.pretrain_lr, self.moments)
        with torch.no_grad():
            user.copy_(moved)

    def upload(self, generator: torch.Generator) -> None:
        graph = self.graph
        graph.upload_users(torch.arange(graph.model.num_clients),
                           graph.randomness_for_all(graph.engine, generator))

    def report(self) -> Dict[str, object]:
        return {'uniformity': self.graph.uniformity()}


class RemoteClients(PretrainingClients):
    """Clients on the devices behind ``transport`` (their embeddings never reach the
    server): each step is a message to every device, its users' streams keyed by a seed the
    server draws."""

    def __init__(self, graph, transport):
        self.graph = graph
        self.transport = transport

    def views(self, generator: torch.Generator) -> Callable[[int], Tensor]:
        seed = draw_round_seed(generator)
        replies = self.transport.send('pretrain-views',
                                      {node: {'seed': seed} for node in self.transport.nodes})
        item = self.graph.model.item
        views = torch.zeros(2, self.graph.model.num_clients, item.size(1), dtype=item.dtype)
        for reply in replies.values():
            views[:, reply['users']] = reply['views'].transpose(0, 1).to(item.dtype)
        return _Views(lambda view: views[view])

    def step(self, gradient: Tensor, selected: Tensor) -> None:
        self.transport.send('pretrain-step', {
            node: {'gradient': gradient[held], 'selected': selected[held]}
            for node, held in self.transport.nodes.items()})

    def upload(self, generator: torch.Generator) -> None:
        seed = draw_round_seed(generator)
        replies = self.transport.send('upload-users',
                                      {node: {'seed': seed} for node in self.transport.nodes})
        for reply in replies.values():
            self.graph.absorb_user_updates(reply['users'], reply['user-update'])


def pretrain(graph, clients: PretrainingClients, generator: torch.Generator,
             progress: bool = True) -> Dict[str, object]:
    """The server's loop of pre-training (see the module docstring) over ``clients``, the
    graph engine ``graph``'s :attr:`pretrain_rounds` rounds (none: only the record); its
    record for ``metrics.json``: the rounds, their losses and what ``clients`` report."""
    item = graph.model.item
    optimizer = torch.optim.Adam([item], lr=graph.pretrain_lr)
    noise = SimGCLNoise(graph.simgcl_eps, generator)
    num_users = graph.model.num_clients
    losses = []
    for _ in tqdm(range(graph.pretrain_rounds), desc='pre-training', unit='round',
                  disable=not progress or not graph.pretrain_rounds):
        selected_clients, items = pretrain_batch(graph, generator)
        views = clients.views(generator)
        loss = contrastive_loss(graph, views, selected_clients, items, generator, noise)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        selected = torch.zeros(num_users, dtype=torch.bool)
        selected[selected_clients] = True
        clients.step(views.gradient(), selected)
        graph.engine.count_participation(selected_clients)
        losses.append(loss.item())
    if graph.pretrain_rounds:
        clients.upload(generator)
        graph.engine.count_participation(torch.arange(num_users))
    return {'rounds': graph.pretrain_rounds, 'loss': losses, **clients.report()}


def pretrain_batch(graph, generator: torch.Generator) -> Tuple[Tensor, Tensor]:
    """A pre-training round's clients (the selector's) and as many random items."""
    clients = graph.engine.selector(generator)
    items = torch.randperm(graph.model.num_items, generator=generator)[:clients.numel()]
    return clients, items


def contrastive_loss(graph, view_input: Callable[[int], Tensor], clients: Tensor,
                     items: Tensor, generator: torch.Generator,
                     noise: Optional[SimGCLNoise]) -> Tensor:
    """``cl_weight * (InfoNCE(users) + InfoNCE(items))`` between two views: view ``v``
    propagates the user vectors ``view_input(v)`` and the item table over an augmentation of
    ``graph``'s collaborative graph, with SimGCL ``noise`` on every layer."""
    views = []
    for view in range(2):
        augmented = graph.augmentation(graph.graph, generator)
        views.append(graph.gnn(view_input(view), graph.model.item, augmented, perturb=noise))
    return graph.cl_weight * (
        info_nce(views[0][0][clients], views[1][0][clients], graph.cl_temperature)
        + info_nce(views[0][1][items], views[1][1][items], graph.cl_temperature))
