"""Peak memory and time of PFedRec rounds with every user in every round, the round's clients
trained together or in blocks (``--round-block``), with or without user-level DP.

    python scripts/round_blocks.py --data-path data/u100000 --rounds 3 --dp
    python scripts/round_blocks.py --data-path data/u100000 --rounds 3 --dp --round-block 20000

The peak is the process's (``VmHWM``), data loading included; glibc returns freed memory
after every round, as ``--return-freed-memory`` makes ``train`` do.
"""
import argparse
import ctypes
import os
import time

import torch

from fedgraph.assemble import build_run, prepare_split
from fedgraph.config import TrainConfig


def memory_mib(key: str) -> int:
    """A ``/proc/self/status`` entry (``VmRSS``, ``VmHWM``) in MiB."""
    with open('/proc/self/status') as status:
        line = next(line for line in status if line.startswith(key + ':'))
    return int(line.split()[1]) // 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--data-path', required=True, help='a LightGCN folder (fedgraph synthesize)')
    parser.add_argument('--round-block', type=int, default=None)
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--dp', action='store_true',
                        help='eps = 4, delta = 1e-6, adaptive clip at the 0.8 quantile, step 0.5')
    parser.add_argument('--threads', type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    privacy = (dict(dp_epsilon=4, dp_delta=1e-6, dp_clip_quantile=0.8, dp_clip_lr=0.5)
               if args.dp else {})
    config = TrainConfig(algorithm='pfedrec', dataset='lightgcn', data_path=args.data_path,
                         protocol='full', seed=0, threads=args.threads, rounds=50,
                         round_block=args.round_block, **privacy)
    engine, generator = build_run(config, prepare_split(config))
    trim = ctypes.CDLL('libc.so.6').malloc_trim
    trim(0)
    built = memory_mib('VmRSS')
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(args.rounds):
        engine.run_round(generator)
        trim(0)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(f'{args.data_path}: round_block {args.round_block}, DP {args.dp}, {args.rounds} rounds, '
          f'{args.threads} thread(s): built {built} MiB, peak {memory_mib("VmHWM")} MiB; '
          f'{wall / args.rounds:.1f} s wall and {cpu / args.rounds:.1f} s CPU a round; '
          f'load average {" ".join(f"{x:.1f}" for x in os.getloadavg())}')


if __name__ == '__main__':
    main()
