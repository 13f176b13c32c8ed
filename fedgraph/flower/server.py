"""The server side: the ``ServerApp`` of a federated recommender on Flower.

:class:`RowFedAvg`, a Flower ``Strategy``, runs the server half of
:meth:`~fedgraph.federated.engine.FederatedEngine.run_round` over messages:

1. **enrollment** -- every SuperNode answers the ids of the users it holds; the server draws
   the initial model from the run's seed exactly as the in-process engine does
   (:func:`~fedgraph.algorithms.federated.build_model`: heads, then the item table), keeps
   the item table and sends each node its users' initial heads, which never come back.
   Graph models answer with their item sets blurred by pseudo-items and a first noised
   user embedding, from which the server builds its collaborative graph;
2. **pre-training** (PerFedRec++) -- see :meth:`RowFedAvg.pretrain`;
3. **rounds** -- select users (the same selector and generator as in-process), draw the
   round seed of their random streams, send each node holding a selected user the item
   table (graph models: and the context) and its selected users; aggregate the uploaded
   rows with :func:`~fedgraph.federated.aggregation.aggregate_rows`, the mean over the users
   that answered (weighted by samples with ``aggregation='weighted'``); graph models: add
   the users' embedding changes to the server's view of them, update the cluster tables and
   recluster (:meth:`~fedgraph.algorithms.perfedrec.GraphFederatedEngine.finish_round`);
4. **evaluation** -- every node scores its users with their own models and answers sums.

A node that does not answer within ``timeout`` seconds (crashed, disconnected) is left out of
that round: the round completes with the users that answered, and the node is asked again
in later rounds. ``metrics.json`` has the in-process format plus what the messages carried.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

import torch
from flwr.app import (ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord,
                      RecordDict)
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy
from torch import Tensor
from tqdm import tqdm

from fedgraph.algorithms.federated import (GRAPH_ALGORITHMS, build_model, build_selector,
                                           local_training)
from fedgraph.algorithms.perfedrec import GraphFederatedEngine
from fedgraph.config import TrainConfig
from fedgraph.data.partition import ClientPartition
from fedgraph.federated.engine import ClientRound, FederatedEngine, RowUpload
from fedgraph.federated.streams import ClientStreams, draw_round_seed
from fedgraph.flower.records import (config_to_run_config, from_record, run_config_to_config,
                                     to_record)
from fedgraph.nn.augment import SimGCLNoise
from fedgraph.nn.gnn import CollaborativeGraph
from fedgraph.training import metrics_of, round_record, summary_line, write_metrics

log = logging.getLogger(__name__)


def _record_bytes(content: RecordDict) -> int:
    """Bytes of the arrays a message carries (Flower's own count of the payload)."""
    return sum(record.count_bytes() for record in content.array_records.values())


class RowFedAvg(Strategy):
    """Row-wise FedAvg of a federated recommender: a Flower ``Strategy``.

    The server holds a :class:`~fedgraph.federated.engine.FederatedEngine` without any
    interactions: its item table is the global one and it runs the server half of a round
    (:meth:`~fedgraph.federated.engine.FederatedEngine.aggregate`); the heads in its model
    stay at the initial values it handed out. For FedLightGCN and PerFedRec++ it also holds
    the :class:`~fedgraph.algorithms.perfedrec.GraphFederatedEngine` built from the
    enrollment uploads, which computes each round's context, the clusters and the cluster
    tables exactly as in-process.

    The global arrays Flower's ``start`` loop passes around are the item table
    (``{'items': [I, d]}``). :meth:`run` enrolls the nodes, pre-trains (PerFedRec++) and
    then hands the rounds to :meth:`Strategy.start`.

    Args:
        config: the run's configuration (``client_streams`` is implied).
        timeout: seconds to wait for a round's replies; later replies are dropped.
        min_nodes: nodes to wait for before enrolling.
        progress: log a line per round.
    """

    def __init__(self, config: TrainConfig, timeout: float = 120.0, min_nodes: int = 1,
                 progress: bool = True):
        if config.protocol != 'sampled':
            raise ValueError('the Flower apps evaluate on devices under the sampled protocol only')
        if config.algorithm == 'mf':
            raise ValueError('mf is centralized: nothing to federate')
        self.grid: Optional[Grid] = None
        self.config = dataclasses.replace(config, client_streams=True)
        self.timeout = timeout
        self.min_nodes = min_nodes
        self.progress = progress
        self.generator = torch.Generator().manual_seed(config.seed)
        self.node_users: Dict[int, Tensor] = {}
        self.engine: Optional[FederatedEngine] = None
        self.graph: Optional[GraphFederatedEngine] = None
        self.pretraining: Optional[Dict[str, object]] = None
        self.history: List[Dict[str, object]] = []
        self.out: Optional[Path] = None

    # ------------------------------------------------------------------ messages
    def _messages(self, contents: Dict[int, RecordDict], message_type: str,
                  group: str) -> List[Message]:
        """A message of ``contents[node]`` to each node the SuperLink sees online."""
        online = set(self.grid.get_node_ids())
        return [Message(content=content, dst_node_id=node, message_type=message_type,
                        group_id=group) for node, content in contents.items() if node in online]

    @staticmethod
    def _answered(replies: Iterable[Message]) -> Dict[int, Message]:
        """The replies without error, by node."""
        answered = {}
        for reply in replies:
            node = reply.metadata.src_node_id
            if reply.has_error():
                log.warning('node %d failed: %s', node, reply.error.reason)
            else:
                answered[node] = reply
        return answered

    def _send(self, contents: Dict[int, RecordDict], message_type: str,
              group: str) -> Dict[int, Message]:
        """Sends ``contents[node]`` to each online node; the replies without error."""
        return self._answered(self.grid.send_and_receive(
            self._messages(contents, message_type, group), timeout=self.timeout))

    def _wait_for_nodes(self) -> List[int]:
        deadline = time.monotonic() + self.timeout
        while True:
            nodes = sorted(self.grid.get_node_ids())
            if len(nodes) >= self.min_nodes:
                return nodes
            if time.monotonic() > deadline:
                raise TimeoutError(f'{len(nodes)} of {self.min_nodes} nodes connected')
            time.sleep(0.5)

    # ------------------------------------------------------------------ enrollment
    def enroll(self, grid: Grid) -> None:
        """Learns which node holds which users, hands out the initial model and, for graph
        models, builds the collaborative graph from the enrollment uploads."""
        self.grid = grid
        nodes = self._wait_for_nodes()
        query = {node: RecordDict({'config': ConfigRecord({'step': 'enroll'})})
                 for node in nodes}
        replies = self._send(query, MessageType.QUERY, 'enroll')
        if not replies:
            raise RuntimeError(f'none of the {len(nodes)} nodes answered the enrollment')
        self.node_users = {node: from_record(reply.content['users'])['users']
                           for node, reply in sorted(replies.items())}
        num_items = {int(reply.content['meta']['num-items']) for reply in replies.values()}
        if len(num_items) != 1:
            raise ValueError(f'nodes disagree on the number of items: {sorted(num_items)}')
        users = torch.sort(torch.cat(list(self.node_users.values()))).values
        if not torch.equal(users, torch.arange(users.numel())):
            raise ValueError('the nodes must hold users 0..U-1, each exactly once '
                             f'(got {users.numel()} ids up to {int(users.max())})')
        num_users, num_items = users.numel(), num_items.pop()
        config = self.config
        model = build_model(config, num_users, num_items, self.generator)
        nothing = ClientPartition(torch.zeros(num_users + 1, dtype=torch.long),
                                  torch.empty(0, dtype=torch.long), num_items)
        self.engine = FederatedEngine(model, nothing, local_training(config, num_items),
                                      build_selector(config, num_users), None, ClientStreams())
        enroll_seed = draw_round_seed(self.generator) if self.is_graph else 0
        init = {node: RecordDict({
            'config': ConfigRecord({'step': 'init', 'enroll-seed': enroll_seed}),
            'private': to_record({name: value.detach()[held]
                                  for name, value in model.private_parameters().items()})})
            for node, held in self.node_users.items()}
        replies = self._send(init, MessageType.QUERY, 'init')
        if self.is_graph:
            self._build_graph([from_record(reply.content['enrollment'])
                               for reply in replies.values()])
        self.engine.participation[torch.cat([self.node_users[n] for n in replies])] += 1
        log.info('enrolled %d users on %d nodes, %d items', num_users, len(self.node_users),
                 num_items)

    @property
    def is_graph(self) -> bool:
        return self.config.algorithm in GRAPH_ALGORITHMS

    def _build_graph(self, enrollments: List[Dict[str, Tensor]]) -> None:
        config, engine = self.config, self.engine
        edges = torch.stack([torch.cat([e['edge-user'] for e in enrollments]),
                             torch.cat([e['edge-item'] for e in enrollments])])
        # Edges by user, as the in-process engine holds them: propagation sums in edge order.
        edges = edges[:, torch.sort(edges[0], stable=True).indices]
        graph = CollaborativeGraph(edges, engine.model.num_clients, engine.model.num_items)
        self.graph = GraphFederatedEngine.configured(config, engine, graph)
        for enrollment in enrollments:
            self.graph.server_users[enrollment['users']] = enrollment['user-update'].to(
                self.graph.server_users.dtype)

    def _query_all(self, step: str, **values) -> Dict[int, RecordDict]:
        return {node: RecordDict({'config': ConfigRecord({'step': step, **values})})
                for node in self.node_users}

    # ------------------------------------------------------------------ pre-training
    def pretrain(self) -> Dict[str, object]:
        """PerFedRec++'s contrastive pre-training over messages
        (:meth:`~fedgraph.algorithms.perfedrec.GraphFederatedEngine.pretrain` in-process).

        Each round every node uploads its users' embeddings with the Laplace noise of the two
        views (from their streams of the round's seed); the server builds the two views,
        takes the InfoNCE loss on the round's clients and items, steps the item table (Adam)
        and sends every user the gradient of its embedding and whether it was selected; the
        devices take the Adam step of their rows. At the end every user uploads the change
        of its embedding, as in-process."""
        config, engine, graph = self.config, self.engine, self.graph
        item = engine.model.item
        optimizer = torch.optim.Adam([item], lr=config.pretrain_lr)
        noise = SimGCLNoise(config.simgcl_eps, self.generator)
        num_users = engine.model.num_clients
        losses = []
        for round_index in tqdm(range(config.pretrain_rounds), desc='pre-training',
                                unit='round', disable=not self.progress):
            clients, items = graph.pretrain_batch(self.generator)
            seed = draw_round_seed(self.generator)
            replies = self._send(self._query_all('pretrain-views', seed=seed),
                                 MessageType.QUERY, f'pretrain-{round_index}')
            views = torch.zeros(2, num_users, item.size(1), dtype=item.dtype)
            for reply in replies.values():
                uploaded = from_record(reply.content['views'])
                views[:, uploaded['users']] = uploaded['views'].transpose(0, 1).to(item.dtype)
            views.requires_grad_()
            loss = graph.contrastive_loss(lambda view: views[view], clients, items,
                                          self.generator, noise)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            gradient = views.grad.sum(0)
            selected = torch.zeros(num_users, dtype=torch.bool)
            selected[clients] = True
            steps = {node: RecordDict({
                'config': ConfigRecord({'step': 'pretrain-step'}),
                'gradient': to_record({'gradient': gradient[held], 'selected': selected[held]})})
                for node, held in self.node_users.items()}
            self._send(steps, MessageType.QUERY, f'pretrain-step-{round_index}')
            engine.participation[clients] += 1
            losses.append(loss.item())
        replies = self._send(self._query_all('upload-users', seed=draw_round_seed(self.generator)),
                             MessageType.QUERY, 'pretrain-upload')
        for reply in replies.values():
            uploaded = from_record(reply.content['users'])
            graph.server_users[uploaded['users']] += uploaded['user-update'].to(item.dtype)
        engine.participation += 1
        return {'rounds': config.pretrain_rounds, 'loss': losses}

    # ------------------------------------------------------------------ rounds (Strategy)
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Selects the round's users, draws the seed of their streams and builds a message
        for each online node holding one: the item table, its selected users (graph models:
        their context and the items')."""
        self._began = time.perf_counter()
        engine, model = self.engine, self.engine.model
        if self.graph is not None:
            self.graph.refresh_context()
        selected = engine.selector(self.generator)
        round_seed = draw_round_seed(self.generator)
        self._base = model.item.detach().clone()
        self._selected = selected.numel()
        items = to_record({'items': self._base})
        contents = {}
        for node, held in self.node_users.items():
            mine = torch.sort(held[torch.isin(held, selected)]).values
            if mine.numel():
                content = RecordDict({
                    'items': items, 'selected': to_record({'users': mine}),
                    'config': ConfigRecord({'round': server_round, 'round-seed': round_seed})})
                if self.graph is not None:
                    content['context'] = to_record({'user': model.user_context[mine],
                                                    'item': model.item_context})
                contents[node] = content
        self._contents = contents
        return self._messages(contents, MessageType.TRAIN, str(server_round))

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> Tuple[Optional[ArrayRecord], Optional[MetricRecord]]:
        """Row-wise FedAvg of the uploads of the users that answered
        (:meth:`~fedgraph.federated.engine.FederatedEngine.aggregate`); graph models: their
        embedding changes, cluster tables and reclustering
        (:meth:`~fedgraph.algorithms.perfedrec.GraphFederatedEngine.finish_round`)."""
        answered = self._answered(replies)
        if not answered:
            raise RuntimeError(f'no node answered in round {server_round}')
        base, engine = self._base, self.engine
        uploads = [from_record(reply.content['upload']) for reply in answered.values()]
        users = torch.cat([u['users'] for u in uploads])
        order = torch.sort(users).indices
        users = users[order]
        # Rows by user, as in-process: the aggregate sums them in this order, whatever the
        # order the replies arrived in.
        row_user = torch.cat([u['row-user'] for u in uploads])
        rows = torch.sort(row_user, stable=True).indices
        result = ClientRound(
            RowUpload(users, torch.searchsorted(users, row_user[rows]),
                      torch.cat([u['row-item'] for u in uploads])[rows],
                      torch.cat([u['update'] for u in uploads])[rows].to(base.dtype)),
            torch.cat([u['num-samples'] for u in uploads])[order],
            torch.cat([u['loss'] for u in uploads])[order])
        stats = engine.aggregate(base, result)
        if self.graph is not None:
            change = torch.cat([u['user-update'] for u in uploads])[order]
            self.graph.server_users[users] += change.to(base.dtype)
            self.graph.finish_round()
        self._record = {
            **round_record(server_round - 1, stats, engine),
            'clients_selected': self._selected,
            'nodes_failed': sorted(set(self._contents) - set(answered)),
            'payload_upload_bytes_per_client':
                sum(_record_bytes(r.content) for r in answered.values()) / users.numel(),
            'payload_download_bytes_per_node':
                sum(_record_bytes(self._contents[node]) for node in answered) / len(answered)}
        metrics = MetricRecord({'train_loss': stats.loss, 'clients': stats.num_clients})
        return to_record({'items': engine.model.item}), metrics

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        """In evaluation rounds, a message to every online node with what the in-process
        engine scores its users with: the table broadcast in the latest round under their
        fine-tuned rows (dual personalization), the global table (without it, and for a graph
        model's global level), a graph model's context, clusters and cluster tables."""
        if not self.config.evaluates_after(server_round):
            return []
        engine, model = self.engine, self.engine.model
        shared = RecordDict()
        if self.is_graph or not self.config.dual_personalization:
            shared['items'] = to_record({'items': model.item.detach()})
        if self.config.dual_personalization:
            shared['broadcast'] = to_record({'items': engine.broadcast})
        contents = {}
        for node, held in self.node_users.items():
            content = RecordDict(dict(shared.items()))
            if self.graph is not None:
                content['context'] = to_record({'user': model.user_context[held],
                                                'item': model.item_context})
                if self.graph.cluster_tables is not None and self.config.level_weights[1]:
                    content['clusters'] = to_record({'assignment': self.graph.assignment[held],
                                                     'tables': self.graph.cluster_tables})
            contents[node] = content
        self._contents = contents
        return self._messages(contents, MessageType.EVALUATE, f'eval-{server_round}')

    def aggregate_evaluate(self, server_round: int,
                           replies: Iterable[Message]) -> Optional[MetricRecord]:
        """Mean HR@10 and NDCG@10 over the users of the nodes that answered; closes the
        round's ``metrics.json`` record."""
        record = self._record
        metrics = None
        answered = self._answered(replies)
        if answered:
            sums = [reply.content['metrics'] for reply in answered.values()]
            total = sum(m['num-users'] for m in sums)
            for split in ('val', 'test'):
                record[split] = {metric: sum(m[f'{split}-{metric}'] for m in sums) / total
                                 for metric in ('hr@10', 'ndcg@10')}
            record['payload_evaluate_download_bytes_per_node'] = (
                sum(_record_bytes(self._contents[node]) for node in answered) / len(answered))
            metrics = MetricRecord({f'{split}-{metric}': value
                                    for split in ('val', 'test')
                                    for metric, value in record[split].items()})
        record['seconds'] = time.perf_counter() - self._began
        self.history.append(record)
        if self.progress:
            log.info(summary_line(record, self.config.select_by))
        if self.out is not None:
            write_metrics(self.out, self.metrics())
        return metrics

    def summary(self) -> None:
        log.info('%s: row-wise FedAvg of the item table over %d users on %d nodes',
                 self.config.algorithm, self.engine.model.num_clients, len(self.node_users))

    # ------------------------------------------------------------------ a whole run
    def metrics(self) -> Dict:
        """The run's ``metrics.json`` so far (the in-process format)."""
        return metrics_of(self.history, self.pretraining, self.config)

    def run(self, grid: Grid, out: Optional[Path] = None) -> Dict:
        """Enrollment, pre-training (PerFedRec++) and ``config.rounds`` rounds through
        :meth:`Strategy.start`; writes ``out/config.json`` and ``out/metrics.json``."""
        config = self.config
        self.out = out
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            config.save(out / 'config.json')
        self.enroll(grid)
        if self.graph is not None:
            self.pretraining = (self.pretrain() if config.pretrain_rounds
                                else {'rounds': 0, 'loss': []})
        self.start(grid, to_record({'items': self.engine.model.item}), config.rounds,
                   timeout=self.timeout)
        return self.metrics()


def make_server_app(config: Optional[TrainConfig] = None, out: Optional[Path] = None,
                    timeout: float = 120.0, min_nodes: int = 1,
                    progress: bool = True) -> ServerApp:
    """The ``ServerApp``. Its configuration is the run configuration's over ``config``; the
    run configuration may also set ``out`` (folder of ``metrics.json``), ``timeout`` and
    ``min-nodes``."""
    app = ServerApp()
    defaults = config_to_run_config(config) if config is not None else {}

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_config = {**defaults, **context.run_config}
        folder = run_config.get('out', out)
        strategy = RowFedAvg(run_config_to_config(run_config),
                             timeout=float(run_config.get('timeout', timeout)),
                             min_nodes=int(run_config.get('min-nodes', min_nodes)),
                             progress=progress)
        strategy.run(grid, Path(folder) if folder else None)

    return app
