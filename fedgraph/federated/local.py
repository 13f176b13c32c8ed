"""What a client optimizes in a round, and how: its loss over the round's samples and its
local optimizer, each written once for all clients of a round side by side.

A round plan gives every training positive ``num_negatives`` sampled negatives; a sample is
one (client, item, label). A :class:`LocalLoss` maps a mini-batch's logits to one loss per
sample (a client's loss is the mean over its mini-batch); a pairwise loss keeps each
positive with its negatives in one mini-batch (:attr:`LocalLoss.keeps_groups`) and sees
them as rows of ``[groups, 1 + num_negatives]``. A :class:`LocalOptimizer` updates stacked
per-client tensors (private parameters ``[B, ...]``, local item rows ``[R, d]``) from their
gradients, each client with its own state, and knows its ``torch.optim`` twin for the
reference engine.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, Iterable, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from fedgraph.data.partition import ClientPartition
from fedgraph.federated.plan import RoundPlan, plan_round
from fedgraph.privacy.upload import UploadTransform


def bce(logits: Tensor, label: Tensor) -> Tensor:
    """Per-sample binary cross-entropy :math:`-y \\log \\sigma(s) - (1-y) \\log(1-\\sigma(s))`.

    Computed as ``BCELoss(sigmoid(s))``, as in the PFedRec code, not with the fused
    ``binary_cross_entropy_with_logits``: the two differ once the sigmoid saturates in float32
    (``BCELoss`` clamps the log at -100 and its gradient vanishes with ``sigmoid'``), and
    PFedRec's large item learning rate drives many scores there.
    """
    return F.binary_cross_entropy(torch.sigmoid(logits), label, reduction='none')


class LocalLoss:
    """A client's loss: ``loss(logits, label, group)`` is ``[N]``, one value per sample;
    ``group`` is ``1 + num_negatives``."""

    #: A positive and its negatives stay together, in this order, in one mini-batch.
    keeps_groups: bool = False
    #: The loss of a model that scores every item alike (``None``: not known); a run whose
    #: training loss exceeds it tenfold has diverged (:mod:`fedgraph.training`).
    chance_loss: Optional[float] = None

    def __call__(self, logits: Tensor, label: Tensor, group: int) -> Tensor:
        raise NotImplementedError


class BCELoss(LocalLoss):
    """Pointwise binary cross-entropy on every sample (PFedRec, FedMF, NCF): :func:`bce`."""

    chance_loss = math.log(2)  # sigma(s) = 1/2 for every sample

    def __call__(self, logits: Tensor, label: Tensor, group: int) -> Tensor:
        return bce(logits, label)


class BPRLoss(LocalLoss):
    """Bayesian personalized ranking (Rendle et al., UAI 2009), LightGCN's loss: for a
    positive :math:`i` and its negatives :math:`j`,

    .. math::
        \\ell = \\frac{1}{|J|} \\sum_{j} -\\log \\sigma(s_{ui} - s_{uj}),

    carried by each of the group's samples, so that a mini-batch's mean over samples is the
    mean over its groups."""

    keeps_groups = True
    chance_loss = math.log(2)  # s_ui = s_uj for every pair

    def __call__(self, logits: Tensor, label: Tensor, group: int) -> Tensor:
        scores = logits.view(-1, group)
        loss = -F.logsigmoid(scores[:, :1] - scores[:, 1:]).mean(1)
        return loss.repeat_interleave(group)


class LocalOptimizer:
    """An update rule applied to many clients' tensors at once. :meth:`step` updates
    ``value`` from ``grad`` where ``active`` (a boolean mask over the first dimension: the
    rows of the clients that took this step) with state from :meth:`state`; the base class
    defines no rule."""

    #: Whether a step's size grows with the gradient's (SGD), so that learning rates must
    #: follow the gradient's scale, or not (Adam).
    scales_with_gradient: bool = True

    def state(self, value: Tensor) -> Dict[str, Tensor]:
        """The initial per-element state of ``value`` (per round: clients start afresh)."""
        return {}

    def step(self, value: Tensor, grad: Tensor, lr: float, state: Dict[str, Tensor],
             active: Tensor) -> Tensor:
        raise NotImplementedError

    def step_rows(self, local: Tensor, row: Tensor, sample_grad: Tensor, lr: float,
                  state: Dict[str, Tensor], active: Tensor, row_owner: Tensor) -> Tensor:
        """Updates the local item rows ``local`` ``[R, d]`` from the gradients of the
        samples ``sample_grad`` ``[N, d]`` of rows ``row`` ``[N]``; ``active`` is over
        clients, ``row_owner`` ``[R]`` the client of each row."""
        grad = torch.zeros_like(local).index_add_(0, row, sample_grad)
        return self.step(local, grad, lr, state, active[row_owner])

    def torch_optimizer(self, params: Iterable[Tensor], lr: float) -> torch.optim.Optimizer:
        """The same rule as a ``torch.optim`` optimizer (the reference engine's)."""
        raise NotImplementedError


class SGD(LocalOptimizer):
    """Plain SGD, :math:`\\theta \\leftarrow \\theta - \\eta g` (PFedRec's ``optim.SGD``). A
    client without samples in a step has a zero gradient, so every row is stepped."""

    def step(self, value: Tensor, grad: Tensor, lr: float, state: Dict[str, Tensor],
             active: Tensor) -> Tensor:
        return value - lr * grad

    def step_rows(self, local: Tensor, row: Tensor, sample_grad: Tensor, lr: float,
                  state: Dict[str, Tensor], active: Tensor, row_owner: Tensor) -> Tensor:
        return local.index_add_(0, row, sample_grad.mul_(-lr))  # alpha= is slower on CPU

    def torch_optimizer(self, params: Iterable[Tensor], lr: float) -> torch.optim.Optimizer:
        return torch.optim.SGD(params, lr=lr)


class Adam(LocalOptimizer):
    """Adam (Kingma & Ba, 2015) as ``torch.optim.Adam`` computes it, per client: each client
    counts its own steps for the bias corrections, and a step moves all of a client's rows
    (a row without gradient in that step follows its momentum, as in a local model with a
    dense table).

    Args:
        betas: Adam's :math:`(\\beta_1, \\beta_2)`.
        eps: Adam's :math:`\\epsilon`.
    """

    scales_with_gradient = False

    def __init__(self, betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.betas = tuple(betas)
        self.eps = eps

    def state(self, value: Tensor) -> Dict[str, Tensor]:
        return {'exp_avg': torch.zeros_like(value), 'exp_avg_sq': torch.zeros_like(value),
                'step': torch.zeros(value.size(0), dtype=value.dtype, device=value.device)}

    def step(self, value: Tensor, grad: Tensor, lr: float, state: Dict[str, Tensor],
             active: Tensor) -> Tensor:
        beta1, beta2 = self.betas
        shape = (-1,) + (1,) * (value.dim() - 1)
        mask = active.view(shape)
        state['step'] = state['step'] + active.to(value.dtype)
        step = state['step'].clamp_min(1).view(shape)
        exp_avg = torch.where(mask, beta1 * state['exp_avg'] + (1 - beta1) * grad,
                              state['exp_avg'])
        exp_avg_sq = torch.where(mask, beta2 * state['exp_avg_sq'] + (1 - beta2) * grad * grad,
                                 state['exp_avg_sq'])
        state['exp_avg'], state['exp_avg_sq'] = exp_avg, exp_avg_sq
        correction1 = 1 - beta1 ** step
        denominator = (exp_avg_sq.sqrt() / (1 - beta2 ** step).sqrt()) + self.eps
        return torch.where(mask, value - lr * exp_avg / correction1 / denominator, value)

    def torch_optimizer(self, params: Iterable[Tensor], lr: float) -> torch.optim.Optimizer:
        return torch.optim.Adam(params, lr=lr, betas=self.betas, eps=self.eps)


@dataclass
class LocalTraining:
    """How a client trains in a round (defaults: the PFedRec paper's).

    Attributes:
        lr: the learning rate of the private head.
        item_lr: the learning rate of the local copy of the item table (PFedRec:
            ``lr * num_items * eta``).
        batch_size: the local mini-batch size.
        local_epochs: passes over the local data per round.
        num_negatives: negatives per positive, redrawn every round.
        alternating: PFedRec's two steps per mini-batch -- first the head, then, after a
            fresh forward pass, the item rows -- instead of one joint step.
        personalize_items: evaluate each client with its locally fine-tuned item rows (dual
            personalization) rather than the global table.
        upload: the transform applied to uploaded row updates.
        loss: the clients' loss (:class:`~fedgraph.federated.local.LocalLoss`).
        optimizer: the clients' update rule (:class:`~fedgraph.federated.local.LocalOptimizer`).
        l2_reg: :math:`\\lambda` of the L2 regularization each sample adds to its loss,
            :math:`\\tfrac{\\lambda}{2} (\\lVert e_i \\rVert^2 + \\lVert \\theta_u \\rVert^2)`
            over its item row and its client's private parameters.
        param_lrs: learning rates of named private parameters other than ``lr``.
        proximal: :math:`\\rho` of GPFedRec's pull of a client's whole local item table
            :math:`Q_c` towards a target :math:`R_c` (its personalized aggregate): every step
            adds :math:`\\rho \\cdot \\mathrm{mean}\\big((Q_c - R_c)^2\\big)` (the mean over all
            :math:`I \\times d` coordinates) to the client's loss; 0: none.

    What the server does with the uploads is not the client's recipe but the server's
    pipeline (:class:`~fedgraph.server.stages.ServerPipeline`).
    """
    lr: float = 0.1
    item_lr: float = 0.1 * 80
    batch_size: int = 256
    local_epochs: int = 1
    num_negatives: int = 4
    alternating: bool = True
    personalize_items: bool = True
    upload: UploadTransform = field(default_factory=UploadTransform)
    loss: LocalLoss = field(default_factory=BCELoss)
    optimizer: LocalOptimizer = field(default_factory=SGD)
    l2_reg: float = 0.0
    param_lrs: Mapping[str, float] = field(default_factory=dict)
    proximal: float = 0.0

    def lr_of(self, name: str) -> float:
        """The learning rate of the private parameter ``name``."""
        return self.param_lrs.get(name, self.lr)

    def describe(self) -> Dict[str, str]:
        """The loss's and the optimizer's names (``config.json``'s ``ran``)."""
        return {'loss': type(self.loss).__name__, 'optimizer': type(self.optimizer).__name__}

    def proximal_pull(self, num_items: int, dim: int) -> float:
        """:math:`2 \\rho / (I d)`: the proximal term's gradient per unit of :math:`q - r`."""
        return 2 * self.proximal / (num_items * dim)

    def plan_settings(self) -> Tuple[int, int, int, bool]:
        """``(num_negatives, batch_size, epochs, keep_groups)`` of its round plans (a
        pairwise loss keeps each positive with its negatives)."""
        return self.num_negatives, self.batch_size, self.local_epochs, self.loss.keeps_groups

    def plan(self, partition: ClientPartition, clients: Tensor,
             generator: Optional[torch.Generator],
             known: Optional[ClientPartition] = None) -> RoundPlan:
        """The round plan of ``clients`` under this training (:meth:`plan_settings`), drawn
        from ``generator`` (:func:`~fedgraph.federated.plan.plan_round`)."""
        negatives, batch_size, epochs, keep_groups = self.plan_settings()
        return plan_round(partition, clients, negatives, batch_size, epochs, generator, known,
                          keep_groups)
