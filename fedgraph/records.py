"""A run's records: the per-round record of ``metrics.json``, the best round, the progress
line, and the files (``metrics.json`` and ``metrics.csv``); written alike by in-process
training and a deployment's server."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from fedgraph.config import TrainConfig
from fedgraph.files import write_text


def best_round(history: List[Dict], select_by: str) -> Optional[Dict]:
    """The evaluated round with the highest validation ``select_by``; a later round wins a
    tie (the PFedRec code's ``>=``)."""
    best = None
    for record in history:
        if 'val' in record and (best is None or record['val'][select_by] >= best['val'][select_by]):
            best = record
    if best is None:
        return None
    return {'round': best['round'], 'val': best['val'], 'test': best['test']}


def evaluations_since_best(history: List[Dict], select_by: str) -> int:
    """How many evaluations came after the :func:`best_round`."""
    best = best_round(history, select_by)
    if best is None:
        return 0
    return sum(1 for record in history if 'val' in record and record['round'] > best['round'])


def stops_early(history: List[Dict], config: TrainConfig) -> bool:
    """Whether a run with this ``history`` stops before ``config.rounds``: its latest record
    is an evaluation, and ``config.patience`` (> 0) evaluations came after the best."""
    return (bool(config.patience) and bool(history) and 'val' in history[-1]
            and history[-1]['round'] + 1 < config.rounds
            and evaluations_since_best(history, config.select_by) >= config.patience)


def _loss(record: Dict) -> str:
    """A record's training loss as text (``-`` when the clients did not report it)."""
    return '-' if record['train_loss'] is None else f"{record['train_loss']:.4f}"


def summary_line(record: Dict, select_by: str) -> str:
    """One round's record as the line the progress output prints."""
    text = f"round {record['round']:>3}  loss {_loss(record)}"
    if 'val' in record:
        metric = select_by
        other = 'ndcg@10' if select_by == 'hr@10' else 'ndcg@20'
        text += (f"  val {metric} {record['val'][metric]:.4f} {other} {record['val'][other]:.4f}"
                 f"  test {metric} {record['test'][metric]:.4f} {other} {record['test'][other]:.4f}")
    return text + f"  {record['seconds']:.2f}s"


def progress_text(record: Dict, select_by: str) -> str:
    """A round's record as the progress bar's short text: its loss and, when it evaluated,
    its validation ``select_by``."""
    text = f"loss {_loss(record)}"
    if 'val' in record:
        text += f"  val {select_by} {record['val'][select_by]:.4f}"
    return text


def round_record(round_index: int, stats, engine) -> Dict:
    """A round's ``metrics.json`` record before evaluation: its loss, clients, bytes, the
    uploads the server dropped (``{reason: count}``) and, for a federated engine, the
    privacy spent so far (:meth:`~fedgraph.privacy.ledger.PrivacyLedger.report`)."""
    ledger = engine.ledger
    return {'round': round_index, 'train_loss': stats.loss, 'clients': stats.num_clients,
            'upload_bytes_per_client': stats.upload_bytes,
            'download_bytes_per_client': stats.download_bytes,
            'privacy': None if ledger is None else ledger.report(),
            'uploads_dropped': stats.dropped}


def metrics_of(history: List[Dict], pretraining: Optional[Dict],
               config: TrainConfig) -> Dict:
    """The content of ``metrics.json``: every round's record, the best round, and with
    ``config.patience`` whether early stopping ended the run (``stopped_early``)."""
    metrics = {'rounds': history, 'best': best_round(history, config.select_by)}
    if config.patience:
        metrics['stopped_early'] = stops_early(history, config)
    if pretraining is not None:
        metrics['pretraining'] = pretraining
    return metrics


def write_metrics(out: Path, metrics: Dict) -> None:
    """Writes ``metrics.json`` and, one row a round, ``metrics.csv`` (each atomically)."""
    write_text(out / 'metrics.json', json.dumps(metrics, indent=1) + '\n')
    columns, rows = flat_table(metrics['rounds'])
    table = io.StringIO()
    writer = csv.DictWriter(table, columns, lineterminator='\n')
    writer.writeheader()
    writer.writerows(rows)
    write_text(out / 'metrics.csv', table.getvalue())


def flat_table(history: List[Dict]) -> Tuple[List[str], List[Dict[str, object]]]:
    """The rounds of ``history`` as ``metrics.csv`` holds them: the columns, in the order
    they first appear, and one :func:`flat_record` row a round (a row lacks the columns its
    round did not record, e.g. ``val_*`` when it was not evaluated)."""
    rows = [flat_record(record) for record in history]
    return list(dict.fromkeys(column for row in rows for column in row)), rows


def flat_record(record: Dict, prefix: str = '') -> Dict[str, object]:
    """A round's record as one CSV row: nested records joined by ``_`` (``val_hr@10``),
    lists as JSON."""
    row: Dict[str, object] = {}
    for key, value in record.items():
        if isinstance(value, dict):
            row.update(flat_record(value, f'{prefix}{key}_'))
        else:
            row[prefix + key] = json.dumps(value) if isinstance(value, list) else value
    return row
