"""The server side: the ``ServerApp`` of a federated recommender on Flower.

:class:`RowServer` runs the server half of
:meth:`~fedgraph.federated.engine.FederatedEngine.run_round` over messages:

1. **enrollment** -- every SuperNode answers the ids of the users it holds; the server draws
   the initial model from the run's seed exactly as the in-process engine does
   (:func:`~fedgraph.algorithms.federated.build_model`: heads, then the item table), keeps
   the item table and sends each node its users' initial heads, which never come back;
2. **rounds** -- select users (the same selector and generator as in-process), draw the
   round seed of their random streams, send each node holding a selected user the item
   table and its selected users; aggregate the uploaded rows with
   :func:`~fedgraph.federated.aggregation.aggregate_rows`, the mean over the users that
   answered (weighted by samples with ``aggregation='weighted'``);
3. **evaluation** -- every node scores its users with their own models and answers sums.

A node that does not answer within ``timeout`` seconds (crashed, disconnected) is left out of
that round: the round completes with the users that answered, and the node is asked again
in later rounds. ``metrics.json`` has the in-process format plus what the messages carried.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp
from torch import Tensor
from tqdm import tqdm

from fedgraph.algorithms.federated import build_model, build_selector
from fedgraph.config import TrainConfig
from fedgraph.federated.aggregation import aggregate_rows
from fedgraph.federated.engine import BYTES_PER_INDEX
from fedgraph.federated.streams import draw_round_seed
from fedgraph.flower.records import config_to_run_config, from_record, run_config_to_config, to_record
from fedgraph.training import metrics_of, summary_line, write_metrics

log = logging.getLogger(__name__)


def _record_bytes(content: RecordDict) -> int:
    """Bytes of the arrays a message carries (Flower's own count of the payload)."""
    return sum(record.count_bytes() for record in content.array_records.values())


class RowServer:
    """Row-wise FedAvg of a federated recommender over a Flower ``Grid``.

    Args:
        grid: the ``Grid`` of the ``ServerApp``.
        config: the run's configuration (``client_streams`` is implied).
        timeout: seconds to wait for a round's replies; later replies are dropped.
        min_nodes: nodes to wait for before enrolling.
        progress: show a progress bar and a line per round.
    """

    def __init__(self, grid: Grid, config: TrainConfig, timeout: float = 120.0,
                 min_nodes: int = 1, progress: bool = True):
        if config.algorithm not in ('pfedrec', 'fedmf'):
            raise ValueError(f'the Flower apps run pfedrec and fedmf, not {config.algorithm!r}')
        self.grid = grid
        self.config = config
        self.timeout = timeout
        self.min_nodes = min_nodes
        self.progress = progress
        self.generator = torch.Generator().manual_seed(config.seed)
        self.node_users: Dict[int, Tensor] = {}

    # ------------------------------------------------------------------ messages
    def _send(self, contents: Dict[int, RecordDict], message_type: str,
              group: str) -> Dict[int, Message]:
        """Sends ``contents[node]`` to each node the SuperLink sees online; the replies
        without error, by node."""
        online = set(self.grid.get_node_ids())
        messages = [Message(content=content, dst_node_id=node, message_type=message_type,
                            group_id=group) for node, content in contents.items()
                    if node in online]
        replies = self.grid.send_and_receive(messages, timeout=self.timeout)
        answered = {}
        for reply in replies:
            node = reply.metadata.src_node_id
            if reply.has_error():
                log.warning('node %d failed: %s', node, reply.error.reason)
            else:
                answered[node] = reply
        return answered

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
    def enroll(self) -> None:
        """Learns which node holds which users and hands out the initial model."""
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
        users = torch.cat(list(self.node_users.values()))
        self.users = torch.sort(users).values
        if not torch.equal(self.users, torch.arange(users.numel())):
            raise ValueError('the nodes must hold users 0..U-1, each exactly once '
                             f'(got {users.numel()} ids up to {int(users.max())})')
        self.num_items = num_items.pop()
        model = build_model(self.config, users.numel(), self.num_items, self.generator)
        self.items = model.item.detach().clone()
        self.broadcast = self.items
        self.selector = build_selector(self.config, users.numel())
        self.participation = torch.zeros(users.numel(), dtype=torch.long)
        init = {node: RecordDict({
            'config': ConfigRecord({'step': 'init'}),
            'private': to_record({name: value.detach()[held]
                                  for name, value in model.private_parameters().items()})})
            for node, held in self.node_users.items()}
        self._send(init, MessageType.QUERY, 'init')
        log.info('enrolled %d users on %d nodes, %d items', users.numel(),
                 len(self.node_users), self.num_items)

    # ------------------------------------------------------------------ one round
    def run_round(self, round_index: int) -> Dict[str, object]:
        """One round; returns its ``metrics.json`` record (without evaluation)."""
        selected = self.selector(self.generator)
        round_seed = draw_round_seed(self.generator)
        items = to_record({'items': self.items})
        contents = {}
        for node, held in self.node_users.items():
            mine = held[torch.isin(held, selected)]
            if mine.numel():
                contents[node] = RecordDict({
                    'items': items, 'selected': to_record({'users': torch.sort(mine).values}),
                    'config': ConfigRecord({'round': round_index, 'round-seed': round_seed})})
        replies = self._send(contents, MessageType.TRAIN, str(round_index))
        uploads = [from_record(reply.content['upload']) for reply in replies.values()]
        if not uploads:
            raise RuntimeError(f'no node answered in round {round_index}')
        users = torch.cat([u['users'] for u in uploads])
        order = torch.sort(users).indices
        users = users[order]
        num_samples = torch.cat([u['num-samples'] for u in uploads])[order]
        loss = torch.cat([u['loss'] for u in uploads])[order]
        row_user = torch.cat([u['row-user'] for u in uploads])
        row_item = torch.cat([u['row-item'] for u in uploads])
        update = torch.cat([u['update'] for u in uploads]).to(self.items.dtype)
        weight = num_samples if self.config.aggregation == 'weighted' else None
        self.broadcast = self.items
        self.items = aggregate_rows(self.items, row_item, torch.searchsorted(users, row_user),
                                    update, users.numel(), weight)
        self.participation[users] += 1
        row_bytes = self.items.size(1) * self.items.element_size() + BYTES_PER_INDEX
        epsilon = (None if not self.config.ldp_scale
                   else 2 * self.config.clip / self.config.ldp_scale)
        return {
            'round': round_index, 'train_loss': float(loss.mean()), 'clients': users.numel(),
            'clients_selected': selected.numel(),
            'nodes_failed': sorted(set(contents) - set(replies)),
            'upload_bytes_per_client': row_user.numel() / users.numel() * row_bytes,
            'download_bytes_per_client': float(self.items.numel() * self.items.element_size()),
            'payload_upload_bytes_per_client':
                sum(_record_bytes(r.content) for r in replies.values()) / users.numel(),
            'payload_download_bytes_per_node':
                sum(_record_bytes(contents[node]) for node in replies) / len(replies),
            'epsilon': epsilon,
            'epsilon_spent': None if epsilon is None else epsilon * int(self.participation.max())}

    def evaluate(self, round_index: int) -> Dict[str, Dict[str, float]]:
        """Mean HR@10 and NDCG@10 over the users of the nodes that answered, scored as
        in-process: with dual personalization over the table broadcast in the latest round
        (each user's fine-tuned rows on top), otherwise with the current global table."""
        table = self.broadcast if self.config.dual_personalization else self.items
        content = RecordDict({'items': to_record({'items': table})})
        replies = self._send({node: content for node in self.node_users}, MessageType.EVALUATE,
                             f'eval-{round_index}')
        metrics = [reply.content['metrics'] for reply in replies.values()]
        total = sum(m['num-users'] for m in metrics)
        return {split: {metric: sum(m[f'{split}-{metric}'] for m in metrics) / total
                        for metric in ('hr@10', 'ndcg@10')}
                for split in ('val', 'test')}

    def run(self, out: Optional[Path] = None) -> Dict:
        """Enrollment and ``config.rounds`` rounds; writes ``out/metrics.json`` if given."""
        config = self.config
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            config.save(out / 'config.json')
        self.enroll()
        history = []
        bar = tqdm(range(config.rounds), desc=f'{config.algorithm} on flower', unit='round',
                   disable=not self.progress)
        for round_index in bar:
            began = time.perf_counter()
            record = self.run_round(round_index)
            if (round_index + 1) % config.eval_every == 0 or round_index + 1 == config.rounds:
                record.update(self.evaluate(round_index))
            record['seconds'] = time.perf_counter() - began
            history.append(record)
            if self.progress:
                bar.write(summary_line(record, config.select_by))
            if out is not None:
                write_metrics(out, metrics_of(history, None, config))
        return metrics_of(history, None, config)


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
        server = RowServer(grid, run_config_to_config(run_config),
                           timeout=float(run_config.get('timeout', timeout)),
                           min_nodes=int(run_config.get('min-nodes', min_nodes)),
                           progress=progress)
        server.run(Path(folder) if folder else None)

    return app
