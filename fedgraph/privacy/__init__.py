"""Privacy: what a client's upload goes through and what it adds up to.

* :mod:`fedgraph.privacy.upload` -- clipping and Laplace noise per uploaded row (the graph
  models' local DP);
* :mod:`fedgraph.privacy.gaussian` -- user-level DP-FedAvg: a client's whole update clipped,
  Gaussian noise on the server's sum (central) or on each upload (local);
* :mod:`fedgraph.privacy.accountant` -- dp-accounting's Rényi DP accountant: releases into
  :math:`(\\epsilon, \\delta)`, and the noise that meets a target;
* :mod:`fedgraph.privacy.ledger` -- a run's releases per client, the ``privacy`` record of
  ``metrics.json``;
* :mod:`fedgraph.privacy.leak` -- what an honest-but-curious server learns of a client's
  items from its uploads.
"""
from fedgraph.privacy.gaussian import UserLevelDP
from fedgraph.privacy.ledger import PrivacyLedger
from fedgraph.privacy.upload import LaplaceLDP, UploadTransform

__all__ = ['UserLevelDP', 'PrivacyLedger', 'UploadTransform', 'LaplaceLDP']
