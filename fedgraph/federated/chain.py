"""The running sums of :func:`fedgraph.federated.graph_guided.chained_propagate` (numba:
imported by the server's propagation only)."""
import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def chain_sums(order, ptr, col, sign, scale, flat, out, width):
    """Writes ``out[order[t]] = scale[order[t]] * S_t`` for the running sums :math:`S_t =
    S_{t-1} + \\sum_e sign[e] \\cdot flat[col[e]]` over the entries ``ptr[t]:ptr[t + 1]``
    of step ``t`` (:math:`S_{-1} = 0`), ``width`` columns at a time in a float64
    accumulator: ``flat`` is read only where a step changes, ``out`` written once."""
    size, length = flat.shape
    total = np.zeros(width, dtype=np.float64)
    for start in range(0, length, width):
        span = min(width, length - start)
        total[:span] = 0.0
        for step in range(size):
            for entry in range(ptr[step], ptr[step + 1]):
                source, factor = col[entry], sign[entry]
                for k in range(span):
                    total[k] += factor * flat[source, start + k]
            target = order[step]
            weight = scale[target]
            for k in range(span):
                out[target, start + k] = total[k] * weight
