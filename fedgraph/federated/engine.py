"""The vectorized federated engine: all clients of a round train at once.

One round is: select clients -> broadcast the shared tables -> local training -> upload
(row updates, optionally clipped and noised) -> aggregate. Local training runs the selected
clients' mini-batch steps side by side: local step ``t`` processes the ``t``-th mini-batch of
every client that has one, as one batched tensor operation. Each client still does exactly
its own work -- its own samples, its own number of steps, its own private parameters --
because the loss is a sum of per-client mean losses, whose gradient with respect to a
client's parameters is that client's gradient alone.

Private state is compact: score heads are stacked ``[num_clients, ...]`` tensors inside the
model, and a client's personalized item rows are stored only for the rows it touched
(:class:`~fedgraph.federated.personal.PersonalItemRows`).

The engine is generic over the shared parameters the model declares: the item table is a
row table (clients upload the rows they touched, averaged row by row), and the head's dense
shared parameters (:meth:`~fedgraph.nn.heads.ScoreHead.shared_parameters`, e.g. FedNCF's MLP)
are trained as a local copy per client, ``[B, ...]`` side by side and uploaded whole. What
the server makes of the uploads is its pipeline's (:mod:`fedgraph.server.stages`; FedAvg by
default).
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor
from torch_scatter import scatter

from fedgraph.data.partition import ClientPartition
from fedgraph.federated import closed_form
from fedgraph.federated.aggregation import per_client_vector
from fedgraph.federated.local import LocalTraining
from fedgraph.federated.messages import ClientRound, RoundStats, RowUpload
from fedgraph.federated.round_engine import RoundEngine
from fedgraph.federated.secure import SecureAggregation, SecureTotals
from fedgraph.federated.personal import PersonalItemRows
from fedgraph.federated.plan import RoundPlan, plan_round
from fedgraph.federated.selection import ClientSelector
from fedgraph.federated.streams import ClientStreams, draw_round_seed
from fedgraph.federated.trust import screen
from fedgraph.privacy.ledger import PrivacyLedger
from fedgraph.privacy.upload import UploadTransform
from fedgraph.nn.recommender import FederatedRecommender
from fedgraph.server.stages import ServerPipeline, UploadSum

BYTES_PER_INDEX = 8


def dense_transform(upload: UploadTransform, dense: Dict[str, Tensor],
                    randomness: Union[torch.Generator, Sequence[torch.Generator]]
                    ) -> Dict[str, Tensor]:
    """Each client's change of the dense shared parameters, ``{name: [B, ...]}``, through
    ``upload`` as one row per client (all its dense parameters flattened together), with
    the round's shared generator or each client's own stream."""
    if isinstance(randomness, torch.Generator):
        return per_client_vector(dense, lambda flat: upload(flat, randomness))
    return per_client_vector(dense, lambda flat: ClientStreams.transform(
        upload, flat, torch.arange(flat.size(0)), randomness))


class FederatedEngine(RoundEngine):
    """Simulates federated training of a :class:`FederatedRecommender`, vectorized.

    Args:
        model: the model; its item table is the global shared table, its heads the
            clients' private state.
        partition: the clients' training interactions.
        training: the local training recipe.
        selector: which clients take part in a round.
        known: the items each client never draws as a negative (default: its training
            items; PFedRec excludes its validation and test items too).
        streams: draw each client's randomness from its own stream
            (:class:`~fedgraph.federated.streams.ClientStreams`) rather than from one
            generator shared by the round, as clients on their own devices do.
        closed_form: train a bilinear head with binary cross-entropy and SGD in closed form, in
            one compiled kernel (:mod:`fedgraph.federated.closed_form`), where the model allows;
            ``False``: autograd for every model.
        server: what the server does with the uploads (default: FedAvg's mean).
        secure: the server receives only the secure sum of a round's uploads
            (:mod:`fedgraph.federated.secure`; ``None``: each upload).
    """

    def __init__(self, model: FederatedRecommender, partition: ClientPartition,
                 training: LocalTraining, selector: ClientSelector,
                 known: Optional[ClientPartition] = None,
                 streams: Optional[ClientStreams] = None, closed_form: bool = True,
                 server: Optional[ServerPipeline] = None,
                 secure: Optional[SecureAggregation] = None):
        self.model = model
        self.server = server if server is not None else ServerPipeline()
        self.secure = secure
        self.closed_form = closed_form
        self.partition = partition.to(model.item.device)
        self.known = known.to(model.item.device) if known is not None else None
        self.training = training
        self.selector = selector
        self.streams = streams
        self.broadcast = model.item.detach().clone()
        self.participation = torch.zeros(model.num_clients, dtype=torch.long)
        #: The privacy releases so far (``metrics.json``'s ``privacy`` record).
        self.ledger = PrivacyLedger(
            model.num_clients, selector.count, model.dim,
            self.server.privacy if secure is None else secure.privacy, training.upload,
            secure=secure is not None, server_noise=self.server.server_noise)
        self.personal = PersonalItemRows(model.num_clients, model.num_items, model.dim,
                                         model.item.device, model.item.dtype)
        #: What stands between the clients' honest uploads and the server in a simulated
        #: attack (:mod:`fedgraph.poisoning`): ``ClientRound -> ClientRound``.
        self.adversary: Optional[Callable[[ClientRound], ClientRound]] = None

    @property
    def federated(self) -> 'FederatedEngine':
        return self

    @property
    def chance_loss(self) -> Optional[float]:
        """Its clients' loss at chance (:attr:`LocalLoss.chance_loss
        <fedgraph.federated.local.LocalLoss.chance_loss>`)."""
        return self.training.loss.chance_loss

    #: Whether nothing reads the round's uploads once aggregated (inside :meth:`run_round`,
    #: which hands them to no one): the server's pipeline may then clip them in place.
    _uploads_consumed = False

    #: The clients :meth:`run_round` trains at a time, summing their uploads block by block
    #: (:meth:`blocked_round`); ``None``: the round's clients at once.
    round_block: Optional[int] = None

    # ------------------------------------------------------------------ one round
    def run_round(self, generator: torch.Generator) -> RoundStats:
        if self.round_block is not None:
            return self.blocked_round(generator)
        self._uploads_consumed = True
        try:
            return self.train_round(generator)[0]
        finally:
            self._uploads_consumed = False

    def blocked_round(self, generator: torch.Generator) -> RoundStats:
        """A round whose clients train :attr:`round_block` at a time, in id order: each
        block's uploads are screened, summed (:meth:`ServerPipeline.add_block`) and dropped
        before the next block trains, and the server releases the mean of the sum once. The
        round holds one block's plan, training state and uploads, not the whole round's;
        with dual personalization the blocks' fine-tuned rows are stored once the last block
        has trained (:meth:`PersonalItemRows.replace_blocks`).

        With :attr:`streams` each client draws from its own streams, so the round equals
        :meth:`train_round`'s up to the order of the floating-point sums; with one generator
        shared by the round the blocks draw their plans from it in turn (other draws of
        the same distribution). The server's aggregate must be the mean; secure aggregation
        and a simulated adversary need the whole round's uploads."""
        if self.secure is not None or self.adversary is not None:
            raise ValueError('a round in blocks sums the uploads as the server receives them: '
                             'secure aggregation and a simulated adversary take the whole '
                             'round')
        if type(self).local_round is not FederatedEngine.local_round:
            raise ValueError(f'{type(self).__name__} trains a round\'s clients together')
        clients = torch.sort(self.selector(generator)).values
        round_seed = draw_round_seed(generator) if self.streams is not None else None
        base = self.model.item.detach().clone()
        personalize = self.training.personalize_items
        if personalize and clients.numel() == self.personal.num_clients:
            self.personal.clear()
        total = UploadSum.zeros(base, self.model.shared_dense())
        self.server.start_round()
        kept, rows, losses, fine_tuned = [], [], [], []
        dropped: Dict[str, int] = {}
        for block in clients.split(self.round_block):
            result, plan, local = self.client_round(block, generator, round_seed)
            if personalize:
                fine_tuned.append((self.personal.keys_of(plan.clients[plan.row_owner],
                                                         plan.row_item), local))
            del plan, local
            result, _, block_dropped = screen(result, self.model.num_items,
                                              samples_per_row=1 + self.training.num_negatives)
            for reason, count in block_dropped.items():
                dropped[reason] = dropped.get(reason, 0) + count
            upload = result.upload
            self.server.add_block(total, upload.row_item, upload.row_owner, upload.update,
                                  upload.dense, upload.clients.numel(), result.num_samples,
                                  consume=True)
            kept.append(upload.clients)
            rows.append(torch.bincount(upload.row_owner, minlength=upload.clients.numel()))
            losses.append(result.loss)
            del result, upload
        if personalize:
            self.personal.replace_blocks(clients, fine_tuned)
        if total.num_clients == 0:
            return RoundStats(None, 0, 0.0, 0.0, dropped)
        self.server.release_sum(self.model.item, self.model.shared_dense(), base, total,
                                generator)
        return self.round_record(base, torch.cat(kept), torch.cat(rows), torch.cat(losses),
                                 dropped)

    def train_round(self, generator: torch.Generator) -> Tuple[RoundStats, ClientRound]:
        """One round: both halves; also returns what the clients handed the server."""
        clients = self.selector(generator)
        round_seed = draw_round_seed(generator) if self.streams is not None else None
        base = self.model.item.detach().clone()
        result = self.local_round(clients, generator, round_seed)
        if self.adversary is not None:
            result = self.adversary(result)
        if self.secure is not None:
            return self.aggregate_secure(base, result, generator), result
        result, _, dropped = screen(result, self.model.num_items,
                                    samples_per_row=1 + self.training.num_negatives)
        return self.aggregate(base, result, dropped, generator), result

    def aggregate(self, base: Tensor, result: ClientRound,
                  dropped: Optional[Dict[str, int]] = None,
                  generator: Optional[torch.Generator] = None) -> RoundStats:
        """The server half of a round: the clients' row updates into the shared table
        (``base`` is the table they trained from) and their dense updates into the dense
        shared parameters, through the server's pipeline (:attr:`server`: norm bound, DP
        clipping, the aggregator, DP and server noise), their participation counted.
        ``result`` holds the uploads that passed the server's checks
        (:func:`~fedgraph.federated.trust.screen`), ``dropped`` counts the others; with none
        left, the model stays as it was. Noise is drawn from ``generator``; the releases are
        counted in :attr:`ledger`."""
        upload = result.upload
        num_clients = upload.clients.numel()
        if num_clients == 0:
            return RoundStats(None, 0, 0.0, 0.0, dict(dropped or {}))
        self.server(self.model.item, self.model.shared_dense(), base, upload.row_item,
                    upload.row_owner, upload.update, upload.dense, num_clients,
                    result.num_samples, generator, consume=self._uploads_consumed)
        return self.round_record(base, upload.clients,
                                 torch.bincount(upload.row_owner, minlength=num_clients),
                                 result.loss, dropped)

    def round_record(self, base: Tensor, clients: Tensor, rows_per_client: Tensor,
                     loss: Tensor, dropped: Optional[Dict[str, int]] = None) -> RoundStats:
        """Once the uploads of ``clients`` (``rows_per_client`` rows each, their training
        ``loss``) trained from ``base`` are aggregated: their participation and the release
        counted, and the round's record."""
        self.participation[clients.cpu()] += 1
        self.broadcast = base
        self.ledger.record_aggregate(clients, self.selector.uniform, rows_per_client)
        privacy = self.server.privacy
        dense_upload = (privacy is not None and not privacy.central)
        row_bytes = (base.numel() * base.element_size() if dense_upload
                     else float(rows_per_client.double().mean()) * self.row_bytes)
        return RoundStats(
            loss=float(loss.mean()), num_clients=clients.numel(),
            upload_bytes=row_bytes + self.model.dense_bytes() + self.side_bytes[0],
            download_bytes=self.download_bytes(base), dropped=dict(dropped or {}))

    def aggregate_secure(self, base: Tensor, result: ClientRound,
                         generator: torch.Generator) -> RoundStats:
        """The server half of a round under secure aggregation: the clients encode and
        mask their updates (each from its own stream, or from ``generator``), the server
        unmasks only their sum (:meth:`SecureAggregation.totals`) and applies it
        (:meth:`apply_secure`). The server cannot screen an upload it never sees: a client's
        encoding bounds it instead."""
        randomness = generator if result.generators is None else result.generators
        totals = self.secure.totals(result, self.model.num_items, self.dense_shapes, randomness,
                                    draw_round_seed(generator), generator)
        return self.apply_secure(base, totals, generator)

    @property
    def dense_shapes(self) -> Dict[str, torch.Size]:
        """The shapes of the dense shared parameters."""
        return {name: value.shape for name, value in self.model.shared_dense().items()}

    def apply_secure(self, base: Tensor, totals: SecureTotals,
                     generator: Optional[torch.Generator]) -> RoundStats:
        """A secure sum's mean over ``base`` into the shared parameters
        (:meth:`ServerPipeline.release_mean`), its clients' participation and releases
        counted. An aborted round (too few survivors) leaves the model as it was."""
        model = self.model
        dropped = ({'secure_dropout': len(totals.received.dropped)}
                   if totals.received.dropped else {})
        num_clients = totals.clients.numel()
        if totals.rows is None:
            return RoundStats(None, 0, 0.0, 0.0,
                              {**dropped, 'secure_sum_aborted': num_clients})
        dense = model.shared_dense()
        self.server.release_mean(model.item, dense, base, totals.rows, totals.dense,
                                 num_clients, generator)
        self.participation[totals.clients] += 1
        self.broadcast = base
        self.ledger.record_aggregate(totals.clients, self.selector.uniform,
                                     torch.zeros(num_clients, dtype=torch.long))
        size = self.secure.vector_size(model.num_items, model.dim, self.dense_shapes)
        return RoundStats(
            loss=None if totals.loss is None else totals.loss / num_clients,
            num_clients=num_clients,
            upload_bytes=SecureAggregation.upload_bytes(size) + self.side_bytes[0],
            download_bytes=self.download_bytes(base),
            dropped=dropped)

    def count_participation(self, clients: Tensor) -> None:
        """Counts an upload of ``clients`` outside a round (enrollment, pre-training)."""
        self.participation[clients.cpu()] += 1

    @property
    def row_bytes(self) -> int:
        """Bytes of one uploaded row update: its values and its item index."""
        return self.model.dim * self.model.item.element_size() + BYTES_PER_INDEX

    def local_round(self, clients: Tensor, generator: Optional[torch.Generator] = None,
                    round_seed: Optional[int] = None) -> ClientRound:
        """The client half of a round: ``clients`` train on the current item table, keep
        their private parameters and fine-tuned rows, and return what they upload.

        Randomness comes from ``generator`` shared by all clients, or, with
        :attr:`streams`, from each client's own streams of the round ``round_seed``: its
        plan from counter-based streams, its upload noise from its generator, which comes
        back in the result, positioned after that noise, for what the client uploads next
        (a graph model's user embeddings).
        """
        if self.training.personalize_items and clients.numel() == self.personal.num_clients:
            # Every client trains from the broadcast table and its stored rows are replaced
            # below: with all of them in the round the whole store goes now, before the
            # round's own tensors (as large) are made.
            self.personal.clear()
        result, plan, local = self.client_round(clients, generator, round_seed)
        if self.training.personalize_items:
            self.personal.replace(plan.clients, plan.clients[plan.row_owner], plan.row_item,
                                  local)
        return result

    def client_round(self, clients: Tensor, generator: Optional[torch.Generator] = None,
                     round_seed: Optional[int] = None
                     ) -> Tuple[ClientRound, RoundPlan, Tensor]:
        """:meth:`local_round` but for storing the clients' fine-tuned rows: also returns
        the round's plan and the trained local rows ``[R, d]`` (row ``r``: client
        ``plan.row_owner[r]``'s copy of item ``plan.row_item[r]``)."""
        cfg = self.training
        plan = self.planned(self.round_plan(clients, generator, round_seed))
        local, change, private, loss = self.train_clients(plan, self.model.item.detach())
        shared_dense = self.model.shared_dense()
        dense = {name: private.pop(name) - value.detach() for name, value in shared_dense.items()}
        if self.streams is None:
            generators = None
            update = cfg.upload(change, generator)
            dense = dense_transform(cfg.upload, dense, generator)
        else:
            generators = self.streams.generators(round_seed, plan.clients)
            update = self.streams.transform(cfg.upload, change, plan.row_owner, generators)
            dense = dense_transform(cfg.upload, dense, generators)
        upload = RowUpload(plan.clients, plan.row_owner, plan.row_item, update, dense)
        with torch.no_grad():
            for name, tensor in self.model.private_parameters().items():
                tensor[plan.clients] = private[name]
        return ClientRound(upload, plan.num_samples, loss, generators), plan, local

    def round_plan(self, clients: Tensor, generator: Optional[torch.Generator] = None,
                   round_seed: Optional[int] = None) -> RoundPlan:
        """The round's plan for ``clients`` (in id order) under the training's
        ``plan_settings()``: drawn from ``generator``, or, with :attr:`streams`, from each
        client's counter-based stream of ``round_seed``."""
        negatives, batch_size, epochs, keep_groups = self.training.plan_settings()
        clients = torch.sort(clients).values
        if self.streams is None:
            return plan_round(self.partition, clients, negatives, batch_size, epochs,
                              generator, self.known, keep_groups)
        return self.streams.plan(self.partition, clients, negatives, batch_size, epochs,
                                 round_seed, self.known, keep_groups)

    def table_round(self, plan: RoundPlan, tables: Tensor, base: Tensor, loss: Tensor,
                    round_seed: Optional[int] = None) -> ClientRound:
        """What the plan's clients hand the server when each uploads its whole item table
        ``[B, I, d]`` trained from ``base`` (GPFedRec, FedRAP), with their streams of
        ``round_seed`` when the engine has :attr:`streams`."""
        generators = (None if self.streams is None
                      else self.streams.generators(round_seed, plan.clients))
        return ClientRound(RowUpload.tables(plan.clients, tables, base), plan.num_samples,
                           loss, generators)

    def train_clients(self, plan: RoundPlan, table: Tensor, target: Optional[Tensor] = None
                      ) -> Tuple[Tensor, Tensor, Dict[str, Tensor], Tensor]:
        """Runs every selected client's local steps side by side, each starting from its
        rows of the item table ``table`` ``[I, d]`` (the broadcast one). With
        :attr:`LocalTraining.proximal <fedgraph.federated.local.LocalTraining.proximal>`,
        ``target`` ``[R, d]`` holds each local row's target (row ``r``: client
        ``plan.row_owner[r]``'s target of item ``plan.row_item[r]``), and every step of a
        client pulls each of its rows towards it by the proximal term's gradient
        :math:`2 \\rho (q - r) / (I d)`.

        Returns ``(local, change, private, loss)``: the trained local item rows ``[R, d]``
        (row ``r`` is client ``plan.row_owner[r]``'s copy of item ``plan.row_item[r]``), their
        change in the round, the trained private parameters and local copies of the dense
        shared parameters ``{name: [B, ...]}``, and each client's mean training loss ``[B]``.
        """
        cfg = self.training
        model = self.model
        if self.closed_form and closed_form.supports(model, cfg) and not cfg.proximal:
            return closed_form.train_clients(model, cfg, plan, table)
        initial = table.index_select(0, plan.row_item)
        local = initial.clone()
        private = {name: tensor.detach()[plan.clients].clone()
                   for name, tensor in self.model.private_parameters().items()}
        private.update({name: tensor.detach().expand(plan.clients.numel(), *tensor.shape).clone()
                        for name, tensor in self.model.shared_dense().items()})
        sample_loss = torch.empty(plan.item.numel(), dtype=local.dtype, device=local.device)
        optimizer, group = cfg.optimizer, 1 + cfg.num_negatives
        private_names = list(self.model.private_parameters())
        private_state = {name: optimizer.state(value) for name, value in private.items()}
        row_state = optimizer.state(local)
        step_ptr = plan.step_ptr.tolist()
        for start, end in zip(step_ptr[:-1], step_ptr[1:]):
            owner, row = plan.owner[start:end], plan.row[start:end]
            label, weight = plan.label[start:end], plan.weight[start:end]
            item = plan.item[start:end]
            # Each sample's client id; only a graph model's context needs it.
            client = plan.clients[owner] if model.user_context is not None else None
            # The clients that take this step (have a mini-batch in it), and their rows.
            active = torch.zeros(plan.clients.numel(), dtype=torch.bool,
                                 device=owner.device).index_fill_(0, owner, True)

            def client_losses(params, rows):
                losses = cfg.loss(model.sample_logits(params, owner, client,
                                                      model.item_input(rows, item)), label, group)
                if cfg.l2_reg:
                    norms = sum(params[name].pow(2).reshape(params[name].size(0), -1).sum(1)
                                for name in private_names)
                    losses = losses + cfg.l2_reg / 2 * (rows.pow(2).sum(1) + norms[owner])
                return losses

            def stepped(params, grads):
                return {name: optimizer.step(value.detach(), grad, cfg.lr_of(name),
                                             private_state[name], active)
                        for (name, value), grad in zip(params.items(), grads)}

            params = {name: value.requires_grad_() for name, value in private.items()}
            rows = local.index_select(0, row).requires_grad_()
            if cfg.alternating:
                losses = client_losses(params, rows.detach())
                private = stepped(params, torch.autograd.grad((losses * weight).sum(),
                                                              list(params.values())))
                losses = client_losses(private, rows)
                (row_grad,) = torch.autograd.grad((losses * weight).sum(), [rows])
            else:
                losses = client_losses(params, rows)
                *grads, row_grad = torch.autograd.grad((losses * weight).sum(),
                                                       list(params.values()) + [rows])
                private = stepped(params, grads)
            if cfg.proximal:
                grad = torch.zeros_like(local).index_add_(0, row, row_grad)
                pull = cfg.proximal_pull(model.num_items, model.dim)
                grad += pull * (local - target) * active[plan.row_owner].unsqueeze(1)
                local = optimizer.step(local, grad, cfg.item_lr, row_state,
                                       active[plan.row_owner])
            else:
                local = optimizer.step_rows(local, row, row_grad, cfg.item_lr, row_state,
                                            active, plan.row_owner)
            sample_loss[start:end] = losses.detach()
        loss_sum = scatter(sample_loss, plan.owner, dim_size=plan.clients.numel(), reduce='sum')
        num_samples = plan.num_samples.to(loss_sum.dtype) * cfg.local_epochs
        return (local, local - initial, {k: v.detach() for k, v in private.items()},
                loss_sum / num_samples)

    def evaluation_payload(self, users: Tensor) -> Dict[str, Tensor]:
        """The tables a device scores its users with: the table broadcast in the latest
        round, under their fine-tuned rows (dual personalization), or the global table; and
        the dense shared parameters."""
        if self.training.personalize_items:
            tables = {'broadcast': self.broadcast}
        else:
            tables = {'items': self.model.item.detach()}
        return {**tables, **{f'dense/{name}': value.detach()
                             for name, value in self.model.shared_dense().items()}}

    # ------------------------------------------------------------------ scoring
    def personal_rows(self, users: Tensor, items: Tensor) -> Tensor:
        """``[U, k, d]`` each user's own rows of ``items[u]``: its stored fine-tuned rows
        over the table broadcast in the latest round."""
        return self.personal.view(users.unsqueeze(-1), items, self.broadcast)

    def _item_view(self, users: Tensor, items: Tensor) -> Tensor:
        if self.training.personalize_items:
            rows = self.personal_rows(users, items)
        else:
            rows = self.model.item.detach()[items]
        return self.model.item_input(rows, items)

    @torch.no_grad()
    def scores(self, users: Tensor, items: Tensor) -> Tensor:
        """``[U, k]`` logits of ``items[u, j]`` for ``users[u]``, each user with its own
        head and (with dual personalization) its own item view."""
        if self.closed_form and closed_form.supports(self.model, self.training):
            if self.training.personalize_items:
                return closed_form.scores(self.model, users, items, self.broadcast, self.personal)
            return closed_form.scores(self.model, users, items, self.model.item.detach())
        params = {name: value.unsqueeze(1).expand(-1, items.size(1), *value.shape[1:])
                  for name, value in self.model.client_params(users).items()}
        return self.model.head.logits(params, self._item_view(users, items))

    @torch.no_grad()
    def scores_all(self, users: Tensor) -> Tensor:
        """``[U, I]`` logits of every item for ``users``."""
        model = self.model
        params = model.client_params(users)
        if self.training.personalize_items:
            return self.personal_scores_all(users, params)
        return model.head.logits_all(params, model.item_table_input(model.item.detach()))

    def personal_scores_all(self, users: Tensor, params: Dict[str, Tensor]) -> Tensor:
        """``[U, I]`` logits with each user's own item view: the broadcast table, corrected
        at the user's stored fine-tuned rows."""
        model = self.model
        out = model.head.logits_all(params, model.item_table_input(self.broadcast))
        position, item, values = self.personal.rows_of(users)
        gathered = {name: value[position] for name, value in params.items()}
        out[position, item] = model.head.logits(gathered, model.item_input(values, item))
        return out

    def item_views(self, user: int) -> Tuple[Dict[str, Tensor], List[Tensor], List[float]]:
        """``user``'s model on its own, as a device holds it: its private parameters as the
        score sees them (``[1, ...]``), its item-input table ``[I, d]`` (with dual
        personalization the broadcast table with its fine-tuned rows in place, else the
        global table) and the table's weight; :meth:`scores_all` is the head's
        ``logits_all`` of the two."""
        model, users = self.model, torch.tensor([user], device=self.model.item.device)
        table = model.item.detach()
        if self.training.personalize_items:
            table = self.broadcast.clone()
            _, item, values = self.personal.rows_of(users)
            table[item] = values
        return model.client_params(users), [model.item_table_input(table)], [1.0]

    # ------------------------------------------------------------------ state
    def state_dict(self) -> Dict[str, object]:
        return {'model': self.model.state_dict(), 'broadcast': self.broadcast,
                'personal': self.personal.state_dict(), 'participation': self.participation,
                'ledger': self.ledger.state_dict()}

    def load_state_dict(self, state: Dict[str, object]) -> None:
        self.model.load_state_dict(state['model'])
        self.broadcast = state['broadcast']
        self.personal.load_state_dict(state['personal'])
        self.participation = state['participation']
        self.ledger.load_state_dict(state['ledger'])
