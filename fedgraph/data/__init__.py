"""Interaction data: loaders, the HeteroData graph, splits and client partitions."""
from fedgraph.data.datasets import DATASETS, load_dataset
from fedgraph.data.download import default_root
from fedgraph.data.formats import (read_amazon_csv, read_csv, read_lastfm_2k, read_lightgcn,
                                   read_movielens_1m, read_movielens_100k,
                                   read_pfedrec_ratings, write_lightgcn)
from fedgraph.data.hetero import (ITEM, RATED_BY, RATES, USER, interactions_to_hetero,
                                  with_edges, with_users)
from fedgraph.data.partition import ClientBatch, ClientPartition
from fedgraph.data.reader import DataFormatError
from fedgraph.data.split import (RankingSplit, SampledSplit, leave_one_out_split,
                                 predefined_split, ratio_split)
from fedgraph.data.synthetic import synthetic_interactions

__all__ = [
    'DATASETS', 'load_dataset', 'default_root',
    'read_amazon_csv', 'read_csv', 'read_lastfm_2k', 'read_lightgcn', 'read_movielens_1m',
    'read_movielens_100k', 'read_pfedrec_ratings', 'write_lightgcn',
    'USER', 'ITEM', 'RATES', 'RATED_BY', 'interactions_to_hetero', 'with_edges', 'with_users',
    'ClientBatch', 'ClientPartition', 'DataFormatError',
    'SampledSplit', 'RankingSplit', 'leave_one_out_split', 'ratio_split', 'predefined_split',
    'synthetic_interactions',
]
