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
from fedgraph.nn.views import GraphView
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


#: Adam's moment decay rates and its term against division by zero (PyTorch's defaults).
ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8


@torch.no_grad()
def adam_rows(rows: Tensor, gradient: Tensor, selected: Tensor, lr: float,
              state: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """One Adam step (Kingma & Ba, ICLR 2015) of the clients' embeddings ``rows`` ``[n, d]``
    on ``gradient``, in place, with the moments ``state`` (empty: the first step; updated in
    place and returned): every row's moments move,
    :math:`m \\leftarrow \\beta_1 m + (1 - \\beta_1) g`,
    :math:`v \\leftarrow \\beta_2 v + (1 - \\beta_2) g^2`, and only the ``selected`` rows
    take the step
    :math:`x \\leftarrow x - \\frac{lr}{1 - \\beta_1^t} \\, m \\,/\\,
    (\\sqrt{v} / \\sqrt{1 - \\beta_2^t} + \\epsilon)`: ``torch.optim.Adam``'s operations,
    without a copy of the rows."""
    gradient = gradient.to(rows.dtype)
    if not state:
        state = {'step': torch.tensor(0.0), 'exp_avg': torch.zeros_like(rows),
                 'exp_avg_sq': torch.zeros_like(rows)}
    beta1, beta2 = ADAM_BETAS
    state['step'] += 1
    step = state['step'].item()
    state['exp_avg'].lerp_(gradient, 1 - beta1)
    state['exp_avg_sq'].mul_(beta2).addcmul_(gradient, gradient, value=1 - beta2)
    chosen = torch.nonzero(selected.to(rows.device)).view(-1)
    denom = (state['exp_avg_sq'][chosen].sqrt() / (1 - beta2 ** step) ** 0.5).add_(ADAM_EPS)
    rows[chosen] = rows[chosen].addcdiv_(state['exp_avg'][chosen], denom,
                                         value=-lr / (1 - beta1 ** step))
    return state


class PretrainingClients:
    """The clients' halves of a pre-training round, whoever holds their embeddings."""

    def views(self, generator: torch.Generator) -> 'ViewInputs':
        """The round's two view inputs: every client's embedding with its upload noise."""
        raise NotImplementedError

    def step(self, gradient: Tensor, selected: Tensor) -> None:
        """The clients apply ``gradient`` ``[U, d]`` of their embeddings (only ``selected``
        ones move)."""
        raise NotImplementedError

    def finish(self) -> None:
        """Pre-training is over: what only its steps need can go (the moments)."""

    def upload(self, generator: torch.Generator) -> None:
        """Every client uploads its embedding's change to the server's view."""
        raise NotImplementedError

    def report(self) -> Dict[str, object]:
        """Entries of the pre-training record that need the clients' embeddings."""
        return {}


class ViewInputs:
    """The two views' inputs ``make(v)`` ``[U, d]`` (each a tensor of its own, made when
    asked for), and the gradient of the loss in the clients' embeddings, which both views
    perturb: :attr:`gradient`, the sum of the gradients in the two inputs, into which the
    backward pass adds (:meth:`~fedgraph.nn.gnn.FederatedGNN.view_rows`)."""

    def __init__(self, make: Callable[[int], Tensor]):
        self.make = make
        self.gradient: Optional[Tensor] = None

    def __call__(self, view: int) -> Tensor:
        made = self.make(view)
        if self.gradient is None:
            self.gradient = torch.zeros_like(made)
        return made


class LocalClients(PretrainingClients):
    """Clients in this process: the engine's own user table (``graph``: a
    :class:`~fedgraph.federated.graph.GraphFederatedEngine`). Their upload noise comes from
    their streams of a seed drawn from the run's generator, or, without per-client streams,
    from that generator itself, view by view."""

    def __init__(self, graph):
        self.graph = graph
        self.moments: Dict[str, Tensor] = {}

    def views(self, generator: torch.Generator) -> ViewInputs:
        graph = self.graph
        user, upload = graph.user_table.detach(), graph.training.upload
        if graph.engine.streams is None:
            zeros = user.new_zeros(1, user.size(1)).expand_as(user)

            def noised(view: int) -> Tensor:
                # An upload's noise (of zeros: no copy of the table), then the embeddings;
                # without noise the upload is the zeros themselves.
                noise = upload(zeros, generator)
                return user.clone() if noise is zeros else noise.add_(user)
            return ViewInputs(noised)
        offsets = view_offsets(upload, user, graph.randomness_for_all(graph.engine, generator))
        return ViewInputs(lambda view: user + offsets[view])

    def step(self, gradient: Tensor, selected: Tensor) -> None:
        self.moments = adam_rows(self.graph.user_table, gradient, selected,
                                 self.graph.pretrain_lr, self.moments)

    def finish(self) -> None:
        self.moments = {}

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

    def views(self, generator: torch.Generator) -> ViewInputs:
        seed = draw_round_seed(generator)
        replies = self.transport.send('pretrain-views',
                                      {node: {'seed': seed} for node in self.transport.nodes})
        item = self.graph.model.item
        views = torch.zeros(2, self.graph.model.num_clients, item.size(1), dtype=item.dtype)
        for reply in replies.values():
            views[:, reply['users']] = reply['views'].transpose(0, 1).to(item.dtype)
        return ViewInputs(lambda view: views[view])

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
    optimizer = torch.optim.Adam([graph.model.item], lr=graph.pretrain_lr)
    noise = SimGCLNoise(graph.simgcl_eps, generator)
    server_graph = GraphView(graph.graph, partition=graph.graph.item_sets()
                             if graph.pretrain_rounds else None)
    losses = [pretrain_round(graph, clients, server_graph, optimizer, generator, noise)
              for _ in tqdm(range(graph.pretrain_rounds), desc='pre-training', unit='round',
                            disable=not progress or not graph.pretrain_rounds)]
    if graph.pretrain_rounds:
        del server_graph  # the users' item sets
        clients.finish()
        clients.upload(generator)
        graph.engine.count_participation(torch.arange(graph.model.num_clients))
    return {'rounds': graph.pretrain_rounds, 'loss': losses, **clients.report()}


def pretrain_round(graph, clients: PretrainingClients, server_graph: GraphView,
                   optimizer: torch.optim.Optimizer, generator: torch.Generator,
                   noise: SimGCLNoise) -> float:
    """One round of :func:`pretrain`: the contrastive loss of a batch, the server's step of
    the item table (``optimizer``) and the clients' of their embeddings; its loss. What
    the round made (its views, their gradient) is free when it returns."""
    selected_clients, items = pretrain_batch(graph, generator)
    views = clients.views(generator)
    loss = contrastive_loss(graph, server_graph, views, selected_clients, items, generator,
                            noise)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    selected = torch.zeros(graph.model.num_clients, dtype=torch.bool)
    selected[selected_clients] = True
    clients.step(views.gradient, selected)
    graph.engine.count_participation(selected_clients)
    return loss.item()


def pretrain_batch(graph, generator: torch.Generator) -> Tuple[Tensor, Tensor]:
    """A pre-training round's clients (the selector's) and as many random items."""
    clients = graph.engine.selector(generator)
    items = torch.randperm(graph.model.num_items, generator=generator)[:clients.numel()]
    return clients, items


def contrastive_loss(graph, server_graph: GraphView, view_input: ViewInputs, clients: Tensor,
                     items: Tensor, generator: torch.Generator,
                     noise: Optional[SimGCLNoise]) -> Tensor:
    """``cl_weight * (InfoNCE(users) + InfoNCE(items))`` between two views: view ``v``
    propagates the user vectors ``view_input(v)`` and the item table over an augmentation of
    the server's graph (``server_graph``, the graph engine ``graph``'s with its users' item
    sets), with SimGCL ``noise`` on every layer, at the rows of ``clients`` and ``items``
    only (:meth:`~fedgraph.nn.gnn.FederatedGNN.view_rows`); the backward pass adds the
    gradient in the user vectors to ``view_input.gradient``."""
    views = []
    for view in range(2):
        augmented = graph.augmentation.view(server_graph, generator)
        user = view_input(view)
        views.append(graph.gnn.view_rows(user, graph.model.item, augmented, clients, items,
                                         perturb=noise, user_gradient=view_input.gradient))
        del user, augmented  # each view's own tensors are free before the next one's
    return graph.cl_weight * (
        info_nce(views[0][0], views[1][0], graph.cl_temperature)
        + info_nce(views[0][1], views[1][1], graph.cl_temperature))
