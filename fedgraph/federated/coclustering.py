"""CoFedRec's co-clustering (He et al., *Co-clustering for Federated Recommender System*,
WWW 2024), on the vectorized engine and on the reference engine.

PFedRec's clients (a private linear head, alternating SGD steps: the head, then the item
rows), each holding its own whole item table :math:`V_u`. A round's clients train from the
table they start from -- their own, or the group model if the server put them in the
previous round's similar group -- on

.. math::
    \\mathcal{L}_u = \\mathrm{BCE} + \\lambda \\, \\mathcal{L}_{sup},

where :math:`\\mathcal{L}_{sup}` is the supervised contrastive term
(:func:`supervised_contrastive`) over the distinct items :math:`A` of the mini-batch,
labelled by the server's item membership :math:`M` (none in round 0), and upload
:math:`V_u`. The server (:meth:`CoClusterState.aggregate`)

1. averages the uploads, :math:`V_g = \\frac{1}{|P|} \\sum_{u \\in P} V_u` (the model's
   item table);
2. clusters :math:`V_g`'s rows by k-means into :math:`K` item categories: :math:`M`;
3. draws a core client :math:`c \\in P` and a non-empty category :math:`k`, and scores each
   client by :math:`s_u = \\sum_{i \\in M_k} \\cos(V_{c,i}, V_{u,i})`;
4. sorts the scores, cuts them at their elbow (:func:`elbow`) into a similar group
   :math:`D_s` (the clients up to the elbow) and the others;
5. gives :math:`D_s` the group model :math:`V_s = \\frac{1}{|D_s|} \\sum_{u \\in D_s} V_u`
   to start their next round from; the others start from their own table. Everyone
   receives :math:`M`.

A client scores with the table it trained last. The vectorized engine trains only the rows
of the round's samples (the others of a client's table do not move: neither term reaches
them) and holds every client's tables (:class:`~fedgraph.federated.graph_guided.ClientTables`:
memory grows with the clients that trained times the items); the reference engine trains
each client's whole table with ``torch.optim.SGD``, client after client. A deployment runs
the vectorized engine's halves apart: :meth:`CoClusterEngine.local_round` on the nodes, which
keep their users' tables (:class:`CoClusterNodeHooks`), and :meth:`CoClusterEngine.aggregate`
on the server, which sends each round's users their start tables and the membership.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from fedgraph.clustering import kmeans
from fedgraph.federated.engine import FederatedEngine
from fedgraph.federated.graph_guided import ClientTables
from fedgraph.federated.local import SGD, BCELoss, bce
from fedgraph.federated.messages import ClientRound, Payload, RoundStats, RowUpload
from fedgraph.federated.node import Node, NodeHooks
from fedgraph.federated.plan import RoundPlan
from fedgraph.federated.reference import ClientModel, ReferenceEngine

#: Clients whose contrastive terms are computed at once (each a ``[P, P]`` block).
CHUNK_CLIENTS = 64


def supervised_contrastive(embeddings: Tensor, labels: Tensor, valid: Tensor,
                           temperature: float) -> Tensor:
    """``[C]`` each of ``C`` clients' supervised contrastive term over its items
    ``embeddings`` ``[C, P, d]`` (``valid`` ``[C, P]`` marks the real ones, ``labels``
    ``[C, P]`` their categories): with :math:`z_i` the unit vectors,
    :math:`Z(i) = \\{z \\in A \\setminus \\{i\\} : M_z = M_i\\}`,

    .. math::
        \\mathcal{L}_{sup} = \\frac{1}{|A^+|} \\sum_{i \\in A^+} -\\log \\Big(
            \\frac{1}{|Z(i)|} \\sum_{z \\in Z(i)}
            \\frac{\\exp(z_i \\cdot z_z / \\tau)}
                 {\\sum_{a \\in A \\setminus \\{i\\}} \\exp(z_i \\cdot z_a / \\tau)} \\Big),

    :math:`A^+` the items with :math:`Z(i)` non-empty (0 when there is none)."""
    unit = F.normalize(embeddings, dim=-1)
    similarity = unit @ unit.transpose(1, 2) / temperature
    size = similarity.size(-1)
    itself = torch.eye(size, dtype=torch.bool, device=similarity.device)
    other = valid.unsqueeze(2) & valid.unsqueeze(1) & ~itself
    positive = other & (labels.unsqueeze(2) == labels.unsqueeze(1))
    count = positive.sum(2)
    anchor = count > 0
    # Rows that are no anchor take every entry, so that no logsumexp is over nothing.
    spare = ~anchor.unsqueeze(2)
    minus_inf = float('-inf')
    denominator = torch.logsumexp(similarity.masked_fill(~(other | spare), minus_inf), dim=2)
    numerator = torch.logsumexp(similarity.masked_fill(~(positive | spare), minus_inf), dim=2)
    term = denominator - numerator + count.clamp(min=1).to(similarity.dtype).log()
    term = torch.where(anchor, term, torch.zeros_like(term))
    return term.sum(1) / anchor.sum(1).clamp(min=1).to(term.dtype)


def supervised_contrastive_grad(embeddings: Tensor, labels: Tensor, valid: Tensor,
                                temperature: float) -> Tuple[Tensor, Tensor]:
    """:func:`supervised_contrastive` ``[C]`` and its gradient with respect to
    ``embeddings`` ``[C, P, d]`` (of the sum over clients), in closed form: with
    :math:`e_{ia} = \\exp(z_i \\cdot z_a / \\tau)`, :math:`D_i` and :math:`N_i` its sums over
    :math:`A \\setminus \\{i\\}` and over :math:`Z(i)`, and :math:`n` the client's anchors,

    .. math::
        G_{ia} = \\frac{[i \\in A^+]}{n} \\Big(\\frac{e_{ia} [a \\ne i]}{D_i}
                 - \\frac{e_{ia} [a \\in Z(i)]}{N_i}\\Big), \\quad
        \\frac{\\partial \\mathcal{L}}{\\partial z} = \\frac{(G + G^\\top) z}{\\tau},

    through the normalization :math:`z = v / \\lVert v \\rVert`:
    :math:`\\partial \\mathcal{L} / \\partial v = (g - z (z \\cdot g)) / \\lVert v \\rVert`.
    The exponentials are shifted by :math:`1 / \\tau`, the largest similarity (an item's own),
    which cancels in every ratio; one ``[C, P, P]`` matrix at a time, no autograd graph."""
    norm = embeddings.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    unit = embeddings / norm
    dtype = embeddings.dtype
    kept = valid.to(dtype)
    other = kept.unsqueeze(2) * kept.unsqueeze(1)
    other.diagonal(dim1=1, dim2=2).zero_()
    positive = (labels.unsqueeze(2) == labels.unsqueeze(1)).to(dtype).mul_(other)
    count = positive.sum(2)
    anchor = count > 0
    shifted = (unit @ unit.transpose(1, 2)).sub_(1).div_(temperature).exp_().mul_(other)
    matching = positive.mul_(shifted)
    tiny = torch.finfo(dtype).tiny
    denominator = shifted.sum(2).clamp(min=tiny)
    numerator = matching.sum(2).clamp(min=tiny)
    anchors = anchor.sum(1).clamp(min=1).to(dtype)
    term = denominator.log() - numerator.log() + count.clamp(min=1).log()
    loss = torch.where(anchor, term, torch.zeros_like(term)).sum(1) / anchors
    scale = anchor.to(dtype) / anchors.unsqueeze(1)
    weight = shifted.mul_((scale / denominator).unsqueeze(2)).sub_(
        matching.mul_((scale / numerator).unsqueeze(2)))
    grad = (weight @ unit + weight.transpose(1, 2) @ unit) / temperature
    grad = (grad - unit * (unit * grad).sum(-1, keepdim=True)) / norm
    return loss, grad


def elbow(scores: Tensor) -> int:
    """The elbow of ``scores`` sorted in descending order: the index of the point farthest
    from the line through the first and the last point (:math:`x_j = j`); ties go to the
    first. The perpendicular distance is the vertical one times a constant, so the index is
    :math:`\\arg\\max_j |s_j - s_0 - j (s_{n-1} - s_0) / (n - 1)|`."""
    size = scores.numel()
    if size < 3:
        return 0
    position = torch.arange(size, dtype=scores.dtype, device=scores.device)
    line = scores[0] + position * (scores[-1] - scores[0]) / (size - 1)
    return int(torch.argmax((scores - line).abs()))


def similar_group(tables: Tensor, items: Tensor, core: int) -> Tensor:
    """``[S]`` positions (among the ``B`` clients of ``tables`` ``[B, I, d]``) of the similar
    group: the clients sorted by :math:`s_u = \\sum_{i \\in` ``items`` :math:`} \\cos(V_{c,i},
    V_{u,i})` with the core client ``core``, in descending order (ties by position), up to
    and with the :func:`elbow`."""
    rows = tables[:, items]
    scores = F.cosine_similarity(rows, rows[core].unsqueeze(0), dim=-1).sum(1)
    order = torch.sort(scores, descending=True, stable=True).indices
    return order[:elbow(scores[order]) + 1]


class CoClusterState:
    """What CoFedRec's server and clients hold besides the model: every client's table it
    trained last (:attr:`tables`, what it scores with) and the table it starts its next round
    from (:attr:`starts`: its own, or the group model), both the initial table until the
    client first trains; the item membership :math:`M` (``None`` before the first round);
    and the server's settings.

    Args:
        table: the initial item table ``[I, d]``.
        num_clients: the population.
        categories: :math:`K`, the item categories.
        kmeans_iterations: k-means's iterations (FAISS, one start).
    """

    def __init__(self, table: Tensor, num_clients: int, categories: int,
                 kmeans_iterations: int = 20):
        self.tables = ClientTables(table, num_clients)
        self.starts = ClientTables(table, num_clients)
        self.membership: Optional[Tensor] = None
        self.categories = categories
        self.kmeans_iterations = kmeans_iterations
        #: The latest round's core client, category and similar group (client ids).
        self.last: Dict[str, object] = {}

    def aggregate(self, clients: Tensor, tables: Tensor, generator: torch.Generator) -> Tensor:
        """The server's step on ``clients``' uploaded ``tables`` ``[B, I, d]`` (see the
        module docstring), its draws from ``generator``: each client's next start is its
        upload, or the group model for the similar group. Returns :math:`V_g`."""
        mean = tables.mean(0)
        seed = int(torch.randint(2 ** 31 - 1, (1,), generator=generator))
        self.membership = kmeans(mean, self.categories, seed=seed,
                                 niter=self.kmeans_iterations, nredo=1).to(mean.device)
        core = int(torch.randint(clients.numel(), (1,), generator=generator))
        present = torch.unique(self.membership)
        category = int(present[torch.randint(present.numel(), (1,), generator=generator)])
        group = similar_group(tables, torch.nonzero(self.membership == category).view(-1), core)
        self.starts[clients] = tables
        self.starts[clients[group]] = tables[group].mean(0).expand(group.numel(), -1, -1)
        self.last = {'core': int(clients[core]), 'category': category,
                     'similar': clients[group].tolist()}
        return mean

    def state_dict(self) -> Dict[str, object]:
        return {'tables': self.tables.state_dict(), 'starts': self.starts.state_dict(),
                'membership': self.membership}

    def load_state_dict(self, state: Dict[str, object]) -> None:
        self.tables.load_state_dict(state['tables'])
        self.starts.load_state_dict(state['starts'])
        self.membership = state['membership']


def _anchors(plan: RoundPlan, row: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """The distinct local rows of a step's samples ``row``, padded per client:
    ``(rows, index, valid)``, ``rows`` ``[n]`` the distinct rows (grouped by client),
    ``index`` ``[G, P]`` the position in ``rows`` of each of the ``G`` clients' ``P`` slots
    and ``valid`` ``[G, P]`` the slots that hold one."""
    rows = torch.unique(row)
    _, counts = torch.unique_consecutive(plan.row_owner[rows], return_counts=True)
    group = torch.repeat_interleave(torch.arange(counts.numel(), device=row.device), counts)
    first = torch.cumsum(counts, 0) - counts
    slot = torch.arange(rows.numel(), device=row.device) - first[group]
    index = torch.zeros(counts.numel(), int(counts.max()), dtype=torch.long, device=row.device)
    valid = torch.zeros_like(index, dtype=torch.bool)
    index[group, slot] = torch.arange(rows.numel(), device=row.device)
    valid[group, slot] = True
    return rows, index, valid


class CoClusterEngine(FederatedEngine):
    """CoFedRec on the vectorized engine (see the module docstring): :meth:`local_round`
    (the clients, side by side) and :meth:`aggregate` (the server). Its clients train
    PFedRec's way, with SGD on BCE."""

    def __init__(self, *args, cocluster: CoClusterState, weight: float, temperature: float,
                 **kwargs):
        super().__init__(*args, **kwargs)
        cfg = self.training
        if (type(cfg.optimizer) is not SGD or type(cfg.loss) is not BCELoss
                or not cfg.alternating or cfg.l2_reg or cfg.proximal):
            raise ValueError('CoFedRec trains with alternating SGD steps on BCE (no L2 or '
                             'proximal term)')
        self.cocluster = cocluster
        self.weight, self.temperature = weight, temperature

    def local_round(self, clients: Tensor, generator: Optional[torch.Generator] = None,
                    round_seed: Optional[int] = None) -> ClientRound:
        """The client half: ``clients`` train from their start tables, keep their heads and
        trained tables and upload the tables."""
        model, state = self.model, self.cocluster
        plan = self.round_plan(clients, generator, round_seed)
        starts = state.starts[plan.clients]
        local, private, loss = self.train_clients(plan, starts[plan.row_owner, plan.row_item])
        starts[plan.row_owner, plan.row_item] = local
        with torch.no_grad():
            for name, tensor in model.private_parameters().items():
                tensor[plan.clients] = private[name]
        state.tables[plan.clients] = starts
        return self.table_round(plan, starts, model.item.detach(), loss, round_seed)

    def contrastive_gradient(self, plan: RoundPlan, row: Tensor, local: Tensor) -> Tensor:
        """``[R, d]`` the gradient of :math:`\\lambda \\mathcal{L}_{sup}` of every client of
        the step whose samples are at ``row``, at the local rows ``local``, computed
        :data:`CHUNK_CLIENTS` clients at a time."""
        grad = torch.zeros_like(local)
        membership = self.cocluster.membership
        if membership is None or not self.weight:
            return grad
        rows, index, valid = _anchors(plan, row)
        labels = membership[plan.row_item[rows]][index]
        for start in range(0, index.size(0), CHUNK_CLIENTS):
            chunk = slice(start, start + CHUNK_CLIENTS)
            mine = rows[index[chunk][valid[chunk]]]
            embeddings = local.new_zeros(*index[chunk].shape, local.size(1))
            embeddings[valid[chunk]] = local[mine]
            _, chunk_grad = supervised_contrastive_grad(embeddings, labels[chunk],
                                                        valid[chunk], self.temperature)
            grad.index_add_(0, mine, self.weight * chunk_grad[valid[chunk]])
        return grad

    def train_clients(self, plan: RoundPlan, start: Tensor
                      ) -> Tuple[Tensor, Dict[str, Tensor], Tensor]:
        """Every client's local steps side by side from its rows ``start`` ``[R, d]`` (row
        ``r``: client ``plan.row_owner[r]``'s item ``plan.row_item[r]``): per mini-batch an
        SGD step of the head on BCE, then one of the rows on BCE (with the new head) plus
        :math:`\\lambda \\mathcal{L}_{sup}`. Returns the trained rows, the trained private
        parameters ``{name: [B, ...]}`` and each client's mean BCE ``[B]``."""
        cfg, model = self.training, self.model
        local = start.clone()
        private = {name: tensor.detach()[plan.clients].clone()
                   for name, tensor in model.private_parameters().items()}
        sample_loss = torch.empty(plan.item.numel(), dtype=local.dtype, device=local.device)
        step_ptr = plan.step_ptr.tolist()
        for first, last in zip(step_ptr[:-1], step_ptr[1:]):
            owner, row = plan.owner[first:last], plan.row[first:last]
            label, weight, item = (plan.label[first:last], plan.weight[first:last],
                                   plan.item[first:last])

            def sample_bce(params, rows):
                return cfg.loss(model.sample_logits(params, owner, None,
                                                    model.item_input(rows, item)), label, 1)

            params = {name: value.requires_grad_() for name, value in private.items()}
            rows = local.index_select(0, row)
            grads = torch.autograd.grad((sample_bce(params, rows) * weight).sum(),
                                        list(params.values()))
            private = {name: value.detach() - cfg.lr_of(name) * grad
                       for (name, value), grad in zip(params.items(), grads)}
            rows = rows.requires_grad_()
            losses = sample_bce(private, rows)
            (row_grad,) = torch.autograd.grad((losses * weight).sum(), [rows])
            grad = self.contrastive_gradient(plan, row, local).index_add_(0, row, row_grad)
            local = local - cfg.item_lr * grad
            sample_loss[first:last] = losses.detach()
        loss = torch.zeros(plan.clients.numel(), dtype=local.dtype, device=local.device)
        loss.index_add_(0, plan.owner, sample_loss)
        return local, private, loss / (plan.num_samples.to(loss.dtype) * cfg.local_epochs)

    def aggregate(self, base: Tensor, result: ClientRound,
                  dropped: Optional[Dict[str, int]] = None,
                  generator: Optional[torch.Generator] = None) -> RoundStats:
        """The server half (:meth:`CoClusterState.aggregate`, its draws from ``generator``):
        the mean of the uploaded tables becomes the model's item table; with no upload left,
        the model stays as it was."""
        upload = result.upload
        if upload.clients.numel() == 0:
            return RoundStats(None, 0, 0.0, 0.0, dict(dropped or {}))
        with torch.no_grad():
            self.model.item.copy_(self.cocluster.aggregate(upload.clients,
                                                           upload.to_tables(base), generator))
        return self.table_round_stats(upload.clients, base, float(result.loss.mean()),
                                      dropped, tables_down=1)

    def round_report(self) -> Dict[str, object]:
        """The latest round's core client, category and the size of its similar group."""
        last = self.cocluster.last
        return {} if not last else {'core': last['core'], 'category': last['category'],
                                    'similar_group': len(last['similar'])}

    def round_payload(self, users: Tensor) -> Dict[str, Tensor]:
        """What a deployment's server sends with a round: the users' start tables (their own
        or the group model) and the item membership (none before the first round)."""
        state = self.cocluster
        payload = {'start': state.starts[users]}
        if state.membership is not None:
            payload['membership'] = state.membership
        return payload

    # ------------------------------------------------------------------ scoring
    def personal_rows(self, users: Tensor, items: Tensor) -> Tensor:
        """``[U, k, d]`` each user's rows of ``items[u]`` in the table it trained last."""
        return self.cocluster.tables.rows(users.unsqueeze(-1), items)

    @torch.no_grad()
    def scores(self, users: Tensor, items: Tensor) -> Tensor:
        """``[U, k]`` logits of ``items[u, j]`` for ``users[u]`` with its head and table."""
        params = {name: value.unsqueeze(1).expand(-1, items.size(1), *value.shape[1:])
                  for name, value in self.model.client_params(users).items()}
        return self.model.head.logits(params, self.personal_rows(users, items))

    @torch.no_grad()
    def scores_all(self, users: Tensor) -> Tensor:
        """``[U, I]`` logits of every item for ``users``, a user at a time."""
        return torch.cat([self.model.head.logits_all(
            self.model.client_params(user.view(1)), self.cocluster.tables[int(user)])
            for user in users])

    def item_views(self, user: int) -> Tuple[Dict[str, Tensor], List[Tensor], List[float]]:
        """``user``'s private parameters and the table it trained last."""
        users = torch.tensor([user], device=self.model.item.device)
        return self.model.client_params(users), [self.cocluster.tables[user].clone()], [1.0]

    def state_dict(self) -> Dict[str, object]:
        return {**super().state_dict(), 'cocluster': self.cocluster.state_dict()}

    def load_state_dict(self, state: Dict[str, object]) -> None:
        super().load_state_dict(state)
        self.cocluster.load_state_dict(state['cocluster'])


class CoClusterNodeHooks(NodeHooks):
    """CoFedRec's node halves: a node keeps its users' trained tables (``extra['tables']``
    ``[n, I, d]``, the initial table until a user trains); a round's request brings the
    selected users' start tables and the item membership."""

    def enroll(self, node: Node, payload: Payload) -> Payload:
        node.extra['tables'] = payload['items'].expand(node.users.numel(), -1, -1).clone()
        return {}

    def configure(self, node: Node, engine: FederatedEngine, payload: Payload,
                  position: Tensor) -> None:
        """The engine trains and scores the node's tables in place; a round's users start
        from the tables the server sent, with its membership."""
        engine.cocluster.tables = ClientTables.held(node.extra['tables'])
        if 'start' in payload:
            engine.cocluster.starts[position] = payload['start']
        if 'membership' in payload:
            engine.cocluster.membership = payload['membership']


class CoClusterReference(ReferenceEngine):
    """CoFedRec on the reference engine: each client trains its whole start table
    (``torch.optim.SGD``: the head's step, then the table's on BCE plus
    :math:`\\lambda \\mathcal{L}_{sup}` over the mini-batch's distinct items), client after
    client; the same server and scoring as :class:`CoClusterEngine`."""

    def __init__(self, *args, cocluster: CoClusterState, weight: float, temperature: float,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.cocluster = cocluster
        self.weight, self.temperature = weight, temperature

    def _train_one(self, plan: RoundPlan, position: int, client: int
                   ) -> Tuple[Tensor, Dict[str, Tensor], float]:
        cfg, membership = self.training, self.cocluster.membership
        private = {k: v.detach()[client] for k, v in self.model.private_parameters().items()}
        model = ClientModel(client, self.cocluster.starts[client], private, self.model)
        head = torch.optim.SGD([{'params': [value], 'lr': cfg.lr_of(name)}
                                for name, value in model.parameters_by_name().items()], cfg.lr)
        table = torch.optim.SGD(model.item.parameters(), cfg.item_lr)
        total, count = 0.0, 0
        for _, items, labels in plan.client_batches(position):
            head.zero_grad()
            bce(model(items), labels).mean().backward()
            head.step()
            table.zero_grad()
            loss = bce(model(items), labels).mean()
            objective = loss
            if membership is not None:
                distinct = torch.unique(items)
                objective = objective + self.weight * supervised_contrastive(
                    model.item(distinct).unsqueeze(0), membership[distinct].unsqueeze(0),
                    torch.ones(1, distinct.numel(), dtype=torch.bool), self.temperature)[0]
            objective.backward()
            table.step()
            total += loss.item() * items.numel()
            count += items.numel()
        return (model.item.weight.detach(),
                {k: v.detach() for k, v in model.parameters_by_name().items()}, total / count)

    def train_round(self, generator: torch.Generator) -> Tuple[RoundStats, ClientRound]:
        plan, base, tables, losses = self.whole_tables(generator, self._train_one)
        self.cocluster.tables[plan.clients] = tables
        with torch.no_grad():
            self.model.item.copy_(self.cocluster.aggregate(plan.clients, tables, generator))
        result = ClientRound(RowUpload.tables(plan.clients, tables, base), plan.num_samples,
                             losses)
        return self.table_round_stats(plan.clients, base, float(result.loss.mean())), result

    def personal_rows(self, users: Tensor, items: Tensor) -> Tensor:
        return self.cocluster.tables.rows(users.unsqueeze(-1), items)

    @torch.no_grad()
    def scores(self, users: Tensor, items: Tensor) -> Tensor:
        """``[U, k]`` logits, one user at a time with its head and the table it trained
        last."""
        out = []
        for user, user_items in zip(users.tolist(), items):
            params = {k: v.detach()[user].expand(user_items.numel(), *v.shape[1:])
                      for k, v in self.model.private_parameters().items()}
            out.append(self.model.head.logits(params, self.cocluster.tables[user][user_items]))
        return torch.stack(out)

    def state_dict(self) -> Dict[str, object]:
        return {**super().state_dict(), 'cocluster': self.cocluster.state_dict()}

    def load_state_dict(self, state: Dict[str, object]) -> None:
        super().load_state_dict(state)
        self.cocluster.load_state_dict(state['cocluster'])
