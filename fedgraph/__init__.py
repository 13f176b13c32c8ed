"""fedgraph: personalized federated recommendation on PyTorch Geometric."""
import os

# OpenMP threads that wait spin briefly, then sleep (fedgraph.runtime): read once, when torch
# loads its OpenMP runtime, so it is set before anything of fedgraph imports torch.
os.environ.setdefault('GOMP_SPINCOUNT', '1000')

from fedgraph import runtime  # noqa: E402  (after the environment it reads)

runtime.set_threads()  # the kernels' pool starts with PyTorch's threads, PyTorch's kept

__version__ = '0.1.0'
