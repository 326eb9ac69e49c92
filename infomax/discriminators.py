"""Critics T(x, y) that score pairs for the mutual-information bounds.

Two families, each usable for the global term (x = z, y = z) and the local term (x = z broadcast
over positions, y = a local feature vector C(x)_p; a 1x1 convolution over a feature map is the
same linear map applied at every position, so vectors of shape (..., c) are used throughout):

* :class:`ConcatCritic`: an MLP on the concatenation [x, y] (the reference recipe: a dense net for
  the global term, 1x1 convolutions for the local term);
* :class:`DotCritic`: separate embeddings of x and y compared by a dot product (the paper's
  "encode-and-dot-product" critic), cheap for all-pairs negatives;
* :class:`CosineCritic`: the same embeddings compared by cosine similarity over a temperature
  (SimCLR's NT-Xent critic, Chen et al. 2020): scores bounded by 1 / temperature.

Each has ``forward(x, y)`` for aligned pairs (leading dimensions broadcast, one score per pair) and
``pairs(x, y)``: every x_i against every y_j, x (N, dx), y (M, ..., dy) -> scores (N, M, ...).
"""

from __future__ import annotations

import torch
from torch import nn

from infomax.errors import SettingError
from infomax.validate import positive_int


def _mlp_tail(hidden: int, n_layers: int) -> nn.Sequential:
    """Everything after the first linear layer: ReLU, (n_layers - 2) hidden layers, output 1."""
    layers: list[nn.Module] = [nn.ReLU(inplace=True)]
    for _ in range(n_layers - 2):
        layers += [nn.Linear(hidden, hidden), nn.ReLU(inplace=True)]
    layers.append(nn.Linear(hidden, 1))
    return nn.Sequential(*layers)


class Critic(nn.Module):
    """What the bounds need of a critic: ``forward`` for aligned pairs, ``pairs`` for all of them."""

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x (..., dx), y (..., dy), leading dimensions broadcast -> one score per pair (...)."""
        raise NotImplementedError

    def pairs(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x (N, dx), y (M, ..., dy) -> scores (N, M, ...): every x_i against every y_j."""
        raise NotImplementedError


class ConcatCritic(Critic):
    """T(x, y) = MLP([x, y]) with ``n_layers`` linear layers of width ``hidden``.

    The first layer on a concatenation is W [x, y] + b = W_x x + W_y y + b, so ``pairs`` computes
    W_x x and W_y y once and broadcasts their sum, instead of materialising every concatenation.
    """

    def __init__(self, x_dim: int, y_dim: int, hidden: int = 512, n_layers: int = 3) -> None:
        super().__init__()
        for setting, value in (("x_dim", x_dim), ("y_dim", y_dim), ("hidden", hidden)):
            positive_int(setting, value)
        if n_layers < 2:
            raise SettingError(f"n_layers={n_layers}: a critic needs at least 2 layers", setting="n_layers")
        self.x_in = nn.Linear(x_dim, hidden)
        self.y_in = nn.Linear(y_dim, hidden, bias=False)
        self.tail = _mlp_tail(hidden, n_layers)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.tail(self.x_in(x) + self.y_in(y)).squeeze(-1)

    def pairs(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        hx = self.x_in(x)  # (N, H)
        hy = self.y_in(y)  # (M, ..., H)
        hx = hx.view(hx.shape[0], *[1] * (hy.dim() - 1), hx.shape[-1])  # (N, 1, ..., H)
        return self.tail(hx + hy.unsqueeze(0)).squeeze(-1)


class DotCritic(Critic):
    """T(x, y) = <f(x), g(y)> / sqrt(d) with two-layer embeddings f and g of width ``hidden``.

    The 1/sqrt(d) keeps initial scores O(1) whatever the width.
    """

    def __init__(self, x_dim: int, y_dim: int, hidden: int = 512) -> None:
        super().__init__()
        for setting, value in (("x_dim", x_dim), ("y_dim", y_dim), ("hidden", hidden)):
            positive_int(setting, value)
        self.f = nn.Sequential(nn.Linear(x_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, hidden))
        self.g = nn.Sequential(nn.Linear(y_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, hidden))
        self.scale = hidden**-0.5

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (self.f(x) * self.g(y)).sum(-1) * self.scale

    def pairs(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        fx = self.f(x)  # (N, H)
        gy = self.g(y)  # (M, ..., H)
        return torch.einsum("nh,m...h->nm...", fx, gy) * self.scale


class CosineCritic(DotCritic):
    """T(x, y) = cos(f(x), g(y)) / temperature, f and g as in :class:`DotCritic`.

    Bounding the scores keeps InfoNCE from being won by scaling embeddings up; the temperature sets
    how sharply hard negatives are weighted (SimCLR uses 0.1-0.5).
    """

    def __init__(self, x_dim: int, y_dim: int, hidden: int = 512, temperature: float = 0.1) -> None:
        super().__init__(x_dim, y_dim, hidden)
        if not temperature > 0:  # also catches NaN
            raise SettingError(f"temperature={temperature}: must be > 0", setting="temperature")
        self.scale = 1.0 / temperature
        self.temperature = temperature
        f, g = self.f, self.g
        # Unit-length embeddings: <f(x), g(y)> is then the cosine similarity.
        self.f = nn.Sequential(*f, _Normalize())
        self.g = nn.Sequential(*g, _Normalize())


class _Normalize(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(x, dim=-1)


CRITICS: dict[str, type[Critic]] = {"concat": ConcatCritic, "dot": DotCritic, "cosine": CosineCritic}


def build_critic(kind: str, x_dim: int, y_dim: int, hidden: int = 512, temperature: float = 0.1) -> Critic:
    """``temperature`` is used by the ``cosine`` critic only."""
    if kind not in CRITICS:
        raise SettingError(f"critic={kind!r} is unknown; choose one of {sorted(CRITICS)}", setting="critic")
    if kind == "cosine":
        return CosineCritic(x_dim, y_dim, hidden=hidden, temperature=temperature)
    if kind == "dot":
        return DotCritic(x_dim, y_dim, hidden=hidden)
    return ConcatCritic(x_dim, y_dim, hidden=hidden)
