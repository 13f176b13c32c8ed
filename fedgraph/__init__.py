"""fedgraph: personalized federated recommendation on PyTorch Geometric."""
import os

# OpenMP threads that wait sleep rather than spin (fedgraph.runtime): read once, when torch
# loads its OpenMP runtime, so it is set before anything of fedgraph imports torch.
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')

__version__ = '0.1.0'
