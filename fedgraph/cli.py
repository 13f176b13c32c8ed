"""Command line: ``python -m fedgraph <command>`` (also installed as ``fedgraph``)."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import List, Optional

from fedgraph.data import DATASETS, leave_one_out_split, load_dataset
from fedgraph.describe import describe, describe_split


def _describe(args: argparse.Namespace) -> None:
    data = load_dataset(args.dataset, root=args.root)
    summary = describe(data)
    summary['leave_one_out'] = describe_split(
        leave_one_out_split(data, num_negatives=args.num_negatives, seed=args.seed))
    print(json.dumps(summary, indent=2))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='fedgraph', description=__doc__)
    commands = parser.add_subparsers(dest='command', required=True)

    describe_parser = commands.add_parser(
        'describe', help='load a data set and print its counts, sparsity and split sizes')
    describe_parser.add_argument('--dataset', default='ml-100k', choices=DATASETS,
                                 help='a named data set (default: ml-100k)')
    describe_parser.add_argument('--root', default=None, help='data root (default: datasets/)')
    describe_parser.add_argument('--num-negatives', type=int, default=99)
    describe_parser.add_argument('--seed', type=int, default=0)
    describe_parser.set_defaults(run=_describe)
    return parser


def main(argv: Optional[List[str]] = None) -> None:
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s',
                        stream=sys.stderr)
    args = build_parser().parse_args(argv)
    args.run(args)
