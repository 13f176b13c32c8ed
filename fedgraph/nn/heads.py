"""Private per-client score functions, stored stacked: row ``c`` of every tensor is client
``c``'s own parameters, and a batch of samples gathers the rows of its owners.

A head maps a client's private parameters and an item vector :math:`e_i` to a logit
:math:`s_{ci}`; the predicted preference is :math:`\\sigma(s_{ci})`.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn


class ScoreHead(nn.Module):
    """Base class: ``num_clients`` stacked private parameter sets of one score function.

    ``user_vector`` names the private parameter that plays the part of the user node in a
    graph model (PFedRec's head weight, MF's user embedding).
    """

    user_vector: str = ''
    #: ``(vector, bias)``: the names of :math:`\theta_c` and :math:`b_c` (``None``: no
    #: bias) when the logit is :math:`\theta_c^\top e_i + b_c`, for the engine's
    #: closed-form local training (:mod:`fedgraph.federated.closed_form`); ``None`` for any other
    #: score, and in a subclass that changes :meth:`logits`.
    bilinear: Optional[Tuple[str, Optional[str]]] = None

    def __init__(self, num_clients: int, dim: int):
        super().__init__()
        self.num_clients = num_clients
        self.dim = dim

    def shared_parameters(self) -> Dict[str, Tensor]:
        """The head's dense parameters shared by all clients and averaged by FedAvg (not
        stacked; none by default)."""
        return {}

    def export_args(self) -> Dict[str, object]:
        """The constructor's arguments besides ``num_clients`` and ``dim`` that rebuild
        this kind of head (:mod:`fedgraph.export`)."""
        return {}

    def private_parameters(self) -> Dict[str, Tensor]:
        """The stacked private tensors, each ``[num_clients, ...]``, by name."""
        shared = self.shared_parameters()
        return {name: value for name, value in self.named_parameters() if name not in shared}

    def logits(self, params: Dict[str, Tensor], item: Tensor) -> Tensor:
        """``[N]`` logits of items ``item`` ``[N, d]`` under per-sample parameters ``params``
        (each ``[N, ...]``, gathered from the stacked tensors); a shared parameter missing
        from ``params`` is the head's own (global) one."""
        raise NotImplementedError

    def grouped_logits(self, params: Dict[str, Tensor], owner: Tensor, item: Tensor) -> Tensor:
        """``[N]`` logits of samples ``item`` ``[N, d]`` whose client is ``owner[n]``, a
        position in the stacked parameters ``params`` (each ``[B, ...]``: a round's clients'
        private parameters and local copies of the shared ones). By default, gathers each
        sample's parameters and calls :meth:`logits`."""
        return self.logits({name: value.index_select(0, owner) for name, value in params.items()},
                           item)

    def logits_all(self, params: Dict[str, Tensor], items: Tensor) -> Tensor:
        """``[B, I]`` logits of every item ``items`` ``[I, d]`` for ``B`` clients' ``params``."""
        raise NotImplementedError


class LinearScoreHead(ScoreHead):
    """PFedRec's score function (Zhang et al., IJCAI 2023): a private ``Linear(d, 1)``,

    .. math::
        s_{ci} = w_c^\\top e_i + b_c ,

    with no user embedding. As in the reference code every client starts from the same
    initial head (one ``nn.Linear`` initialization, copied to all clients).
    """

    user_vector = 'weight'
    bilinear = ('weight', 'bias')

    def __init__(self, num_clients: int, dim: int, generator: Optional[torch.Generator] = None):
        super().__init__(num_clients, dim)
        self.weight = nn.Parameter(torch.empty(num_clients, dim))
        self.bias = nn.Parameter(torch.empty(num_clients))
        self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator: Optional[torch.Generator] = None) -> None:
        # nn.Linear's default initialization, U(-1/sqrt(d), 1/sqrt(d)), drawn once.
        bound = 1.0 / math.sqrt(self.dim)
        init = torch.rand(self.dim + 1, generator=generator) * 2 * bound - bound
        self.weight.copy_(init[:self.dim].expand(self.num_clients, -1))
        self.bias.fill_(float(init[self.dim]))

    def logits(self, params: Dict[str, Tensor], item: Tensor) -> Tensor:
        return (params['weight'] * item).sum(dim=-1) + params['bias']

    def logits_all(self, params: Dict[str, Tensor], items: Tensor) -> Tensor:
        return params['weight'] @ items.t() + params['bias'].unsqueeze(1)


class DotProductHead(ScoreHead):
    """Matrix factorization's score function (FedMF; Chai et al., 2020): a private user
    embedding :math:`u_c` and :math:`s_{ci} = u_c^\\top e_i`. Initialized
    :math:`\\mathcal{N}(0, \\sigma^2)` per client."""

    user_vector = 'user'
    bilinear = ('user', None)

    def __init__(self, num_clients: int, dim: int, std: float = 1.0,
                 generator: Optional[torch.Generator] = None):
        super().__init__(num_clients, dim)
        self.std = std
        self.user = nn.Parameter(torch.empty(num_clients, dim))
        self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator: Optional[torch.Generator] = None) -> None:
        self.user.copy_(torch.randn(self.num_clients, self.dim, generator=generator) * self.std)

    def logits(self, params: Dict[str, Tensor], item: Tensor) -> Tensor:
        return (params['user'] * item).sum(dim=-1)

    def logits_all(self, params: Dict[str, Tensor], items: Tensor) -> Tensor:
        return params['user'] @ items.t()


class NCFHead(ScoreHead):
    """NCF's MLP score function (He et al., WWW 2017), federated as the FedNCF baseline of
    the PFedRec paper: a private user embedding :math:`u_c` and an MLP shared by all clients,

    .. math::
        s_{ci} = w^\\top \\phi_L\\big(\\cdots \\phi_1([u_c ; e_i])\\big) + b, \\qquad
        \\phi_l(x) = \\mathrm{ReLU}(W_l x + b_l).

    The MLP's parameters (:meth:`shared_parameters`) are dense shared parameters: each
    client trains its own copy in a round and the server averages the copies (FedAvg).
    The user embedding is drawn :math:`\\mathcal{N}(0, \\sigma^2)`, each linear layer as
    ``nn.Linear`` draws it, :math:`\\mathcal{U}(-1/\\sqrt{n_{in}}, 1/\\sqrt{n_{in}})`.

    Args:
        num_clients: the number of clients.
        dim: the embedding size :math:`d` (the MLP's input is :math:`2d`).
        hidden: the widths of the hidden layers :math:`\\phi_1, \\dots, \\phi_L`.
        std: :math:`\\sigma`.
    """

    user_vector = 'user'

    def __init__(self, num_clients: int, dim: int, hidden: Sequence[int] = (32, 16, 8),
                 std: float = 1.0,
                 generator: Optional[torch.Generator] = None):
        super().__init__(num_clients, dim)
        if not hidden or min(hidden) < 1:
            raise ValueError(f'hidden layer widths must be >= 1, got {tuple(hidden)}')
        self.std = std
        self.user = nn.Parameter(torch.empty(num_clients, dim))
        widths = [2 * dim, *hidden]
        self.layers = nn.ModuleList(self._linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.output = self._linear(widths[-1], 1)
        self.reset_parameters(generator)

    def _linear(self, in_features: int, out_features: int) -> nn.Module:
        """One layer of the MLP: a shared ``nn.Linear``."""
        return nn.Linear(in_features, out_features)

    @torch.no_grad()
    def reset_parameters(self, generator: Optional[torch.Generator] = None) -> None:
        self.user.copy_(torch.randn(self.num_clients, self.dim, generator=generator) * self.std)
        for layer in [*self.layers, self.output]:
            bound = 1.0 / math.sqrt(layer.in_features)
            for value in (layer.weight, layer.bias):
                value.copy_(torch.rand(value.shape, generator=generator) * 2 * bound - bound)

    def shared_parameters(self) -> Dict[str, Tensor]:
        return {name: value for name, value in self.named_parameters() if name != 'user'}

    def export_args(self) -> Dict[str, object]:
        return {'hidden': [layer.out_features for layer in self.layers]}

    def _layer_names(self):
        """The MLP's layers in order, as parameter name prefixes."""
        return [f'layers.{i}' for i in range(len(self.layers))] + ['output']

    def _mlp(self, params: Dict[str, Tensor], x: Tensor) -> Tensor:
        """The MLP on ``x`` ``[..., 2d]``, each weight either the global ``[out, in]`` or
        per sample ``[..., out, in]``."""
        params = {**self.shared_parameters(), **params}
        for name in self._layer_names():
            weight, bias = params[f'{name}.weight'], params[f'{name}.bias']
            if weight.dim() == 2:
                x = nn.functional.linear(x, weight, bias)
            else:
                x = (weight @ x.unsqueeze(-1)).squeeze(-1) + bias
            if name != 'output':
                x = torch.relu(x)
        return x.squeeze(-1)

    def logits(self, params: Dict[str, Tensor], item: Tensor) -> Tensor:
        return self._mlp(params, torch.cat([params['user'], item], dim=-1))

    def logits_all(self, params: Dict[str, Tensor], items: Tensor) -> Tensor:
        user = params['user'].unsqueeze(1).expand(-1, items.size(0), -1)
        pairs = torch.cat([user, items.unsqueeze(0).expand(user.size(0), -1, -1)], dim=-1)
        return self._mlp({k: v for k, v in params.items() if k != 'user'}, pairs)

    def grouped_logits(self, params: Dict[str, Tensor], owner: Tensor, item: Tensor) -> Tensor:
        """The samples of each client that has any padded into one row of a ``[A, L, 2d]``
        batch, so that every client's own MLP copy applies as one batched matrix product (no
        per-sample copy of the weights)."""
        clients, owner = torch.unique(owner, return_inverse=True)
        params = {name: value.index_select(0, clients) for name, value in params.items()}
        order = torch.sort(owner, stable=True).indices
        sorted_owner = owner[order]
        count = torch.bincount(owner, minlength=clients.numel())
        position = torch.arange(owner.numel(), device=owner.device) - (
            torch.cumsum(count, 0) - count)[sorted_owner]
        pairs = torch.cat([params['user'][sorted_owner], item[order]], dim=-1)
        x = pairs.new_zeros(clients.numel(), int(count.max()), pairs.size(1)).index_put(
            (sorted_owner, position), pairs)
        for name in self._layer_names():
            weight, bias = params[f'{name}.weight'], params[f'{name}.bias']
            x = torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))
            if name != 'output':
                x = torch.relu(x)
        return x.new_empty(owner.numel()).index_put((order,), x[sorted_owner, position, 0])


class _StackedLinear(nn.Module):
    """``num_clients`` private ``Linear(in_features, out_features)`` layers, stacked:
    ``weight`` ``[C, out, in]``, ``bias`` ``[C, out]``."""

    def __init__(self, num_clients: int, in_features: int, out_features: int):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(num_clients, out_features, in_features))
        self.bias = nn.Parameter(torch.empty(num_clients, out_features))


class PrivateNCFHead(NCFHead):
    """NCF's MLP score function with every parameter private, GPFedRec's client model (Zhang
    et al., KDD 2024): :class:`NCFHead`'s score, whose user vector :math:`u_c` and MLP are
    client ``c``'s own and never leave it. Every client starts from one draw: the user
    vector :math:`\\mathcal{N}(0, \\sigma^2)`, each layer as ``nn.Linear`` draws it. Its
    arguments are :class:`NCFHead`'s.
    """

    def _linear(self, in_features: int, out_features: int) -> nn.Module:
        """One layer of the MLP: every client's own, stacked."""
        return _StackedLinear(self.num_clients, in_features, out_features)

    @torch.no_grad()
    def reset_parameters(self, generator: Optional[torch.Generator] = None) -> None:
        self.user.copy_(torch.randn(1, self.dim, generator=generator) * self.std)
        for layer in [*self.layers, self.output]:
            bound = 1.0 / math.sqrt(layer.in_features)
            for value in (layer.weight, layer.bias):
                value.copy_(torch.rand(value.shape[1:], generator=generator) * 2 * bound - bound)

    def shared_parameters(self) -> Dict[str, Tensor]:
        return {}

    def logits_all(self, params: Dict[str, Tensor], items: Tensor) -> Tensor:
        user = params['user'].unsqueeze(1).expand(-1, items.size(0), -1)
        x = torch.cat([user, items.unsqueeze(0).expand(user.size(0), -1, -1)], dim=-1)
        for name in self._layer_names():
            weight, bias = params[f'{name}.weight'], params[f'{name}.bias']
            x = torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))
            if name != 'output':
                x = torch.relu(x)
        return x.squeeze(-1)
