"""Where FedLightGCN's metric goes under user-level DP: its rounds through the DP pipeline with
neither noise nor an effective clip (noise multiplier 0, bound 10^6), the users' embeddings
kept from the server as DP keeps them, or uploaded as without DP (``--upload-users``, a
diagnosis only: those uploads are outside any guarantee).

    python scripts/fedlightgcn_user_view.py --data-path data/u100000 --out runs/flg-stale
    python scripts/fedlightgcn_user_view.py --data-path data/u100000 --upload-users \\
        --out runs/flg-uploaded
    python -m fedgraph summarize runs/flg-stale runs/flg-uploaded
"""
import argparse

from fedgraph.config import TrainConfig
from fedgraph.federated.graph import GraphFederatedEngine
from fedgraph.training import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--data-path', required=True, help='a LightGCN folder (fedgraph synthesize)')
    parser.add_argument('--out', required=True)
    parser.add_argument('--upload-users', action='store_true')
    parser.add_argument('--clients-per-round', type=int, default=4000)
    parser.add_argument('--rounds', type=int, default=50)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    if args.upload_users:
        GraphFederatedEngine.users_upload = property(lambda engine: True)
    config = TrainConfig(algorithm='fedlightgcn', dataset='lightgcn', data_path=args.data_path,
                         protocol='full', rounds=args.rounds, eval_every=10, seed=args.seed,
                         threads=1, clients_per_round=args.clients_per_round,
                         dp_noise_multiplier=0.0, dp_clip=1e6, checkpoint_every=args.rounds)
    train(config, args.out, progress=False)


if __name__ == '__main__':
    main()
