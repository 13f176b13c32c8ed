"""Interaction data: loaders, the HeteroData graph, splits and client partitions.

Each name is imported from its module on first use, so that code which needs only the
partitions, such as a device answering a training message, starts without the loaders and
PyTorch Geometric.
"""
from fedgraph.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    'DATASETS': 'datasets', 'dataset_options': 'datasets', 'load_dataset': 'datasets',
    'default_root': 'download',
    'read_amazon_csv': 'formats', 'read_csv': 'formats', 'read_lastfm_2k': 'formats',
    'read_lightgcn': 'formats', 'read_movielens_1m': 'formats',
    'read_movielens_100k': 'formats', 'read_pfedrec_ratings': 'formats',
    'write_lightgcn': 'formats',
    'USER': 'hetero', 'ITEM': 'hetero', 'RATES': 'hetero', 'RATED_BY': 'hetero',
    'interactions_to_hetero': 'hetero', 'with_edges': 'hetero', 'with_users': 'hetero',
    'ClientBatch': 'partition', 'ClientPartition': 'partition',
    'DataFormatError': 'reader',
    'SampledSplit': 'split', 'RankingSplit': 'split', 'leave_one_out_split': 'split',
    'ratio_split': 'split', 'predefined_split': 'split',
    'synthetic_interactions': 'synthetic',
})
