"""Encoder architectures: image -> (local feature map C(x), mu(x), log sigma^2(x)).

Every encoder takes a normalised float batch ``x`` of shape (B, C, H, W) and returns an
:class:`EncoderOutput` with

* ``local``:  (B, c, h, w) feature map C(x), the "local" features of Deep INFOMAX;
* ``mu``:     (B, z_dim) mean of the Gaussian code p(z|x);
* ``logvar``: (B, z_dim) log sigma^2 of that code;
* ``maps``:   further feature maps of the network, only those asked for by name
  (``encoder(x, maps=("layer4",))``; empty by default): the objective's other scales;
* ``pooled``: (B, p) the pooled vector the mu and log sigma^2 heads read (the global pool of the
  last feature map): a representation of its own, which can serve search.

Architectures are chosen by name through :data:`ARCHITECTURES` so that a serving artifact can
store the name and its keyword arguments and rebuild the network without any training code.
"""

from __future__ import annotations

import math
from typing import NamedTuple, cast

import torch
from torch import nn

from infomax.errors import SettingError
from infomax.validate import non_negative_int, positive_int


class EncoderOutput(NamedTuple):
    local: torch.Tensor
    mu: torch.Tensor
    logvar: torch.Tensor
    maps: tuple[torch.Tensor, ...] = ()  # the feature maps named in the call, in that order
    pooled: torch.Tensor | None = None  # what the heads read; None only from hand-made outputs (tests)

    def rows(self, index: slice) -> EncoderOutput:
        """The same outputs for a slice of the batch (every tensor, the maps too)."""
        return EncoderOutput(
            self.local[index],
            self.mu[index],
            self.logvar[index],
            tuple(m[index] for m in self.maps),
            None if self.pooled is None else self.pooled[index],
        )

    def vectors(self, kind: str) -> torch.Tensor:
        """The vectors an artifact can serve and search: ``"mu"`` (B, z_dim); ``"pooled"``, the
        vector the heads read (B, p); or ``"local"``, the local feature map flattened (B, c * h * w)."""
        if kind == "mu":
            return self.mu
        if kind == "pooled":
            if self.pooled is None:
                raise ValueError("this encoder output carries no pooled vector")
            return self.pooled
        return self.local.flatten(1)


# The kinds EncoderOutput.vectors gives. "pooled" exists because in two-view contrastive training
# the layer before the head often keeps more than the head's output (SimCLR's finding); which one
# searches best is measured (docs/BENCHMARKS.md), not assumed.
VECTORS = ("mu", "pooled", "local")


def pooled_dim(encoder: nn.Module) -> int:
    """Length of an encoder's pooled vector: the input of its mu head."""
    return cast(nn.Linear, encoder.mu).in_features


def check_vectors(name: str, kind: str) -> None:
    """``ValueError`` quoting the setting ``name`` unless ``kind`` is one of :data:`VECTORS`."""
    if kind not in VECTORS:
        raise SettingError(f"{name}={kind!r}: choose one of {VECTORS}", setting=name)


def _conv_block(c_in: int, c_out: int, pool: bool, ceil_mode: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),  # BN follows: a bias would be redundant
        nn.BatchNorm2d(c_out),
        nn.LeakyReLU(0.2, inplace=True),
    ]
    if pool:
        # ceil_mode lets 28 px input reach the same 4x4 map as 32 px (28 -> 14 -> 7 -> 4).
        layers.append(nn.MaxPool2d(2, ceil_mode=ceil_mode))
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    """What the objective, the artifact and explain need of an encoder: the sizes below (set by
    each architecture's ``__init__``) and ``forward(x, maps) -> EncoderOutput``."""

    z_dim: int
    local_channels: int  # c of C(x)
    local_size: int  # h = w of C(x)
    local_map: str  # the name of C(x) among map_channels
    map_channels: dict[str, int]  # the channels of every map forward(x, maps=...) can return

    def forward(self, x: torch.Tensor, maps: tuple[str, ...] = ()) -> EncoderOutput:
        raise NotImplementedError


class ConvEncoder(Encoder):
    """The reference CNN of the method.

    ``n_blocks`` x [conv3x3 - BN - LeakyReLU(0.2) - maxpool 2] -> local map (4x4 at 28, 32 or 64 px),
    then ``n_global_blocks`` x [conv3x3 - BN - LeakyReLU(0.2)], global max pool, and two linear
    heads for mu and log sigma^2. Widths double from ``base_width`` (64) and stop at 512: 64-128-256
    for 32 px (3 blocks), 64-128-256-512 for 64 px (4 blocks). ``n_blocks`` defaults to
    ceil(log2(input_size / 4)) so the local map is about 4x4 whatever the input size.
    ``global_width`` sets the channels of the global blocks (default: the local map's): the pooled
    vector the code is a linear map of has that many dimensions, so a narrow encoder
    (``base_width`` 16: a 64-channel local map) would otherwise give codes of rank 64 at most.
    ``pool`` turns the last feature map into the vector mu and log sigma^2 are linear maps of:
    ``"max"`` (the reference recipe: global max pool, which keeps what fired but not where),
    ``"avg"``, or ``"flatten"`` (every position's features, h*w*g values: the layout is kept, as
    in the paper's fully connected encoder head).
    """

    POOLS = ("max", "avg", "flatten")

    def __init__(
        self,
        in_channels: int = 3,
        input_size: int = 32,
        z_dim: int = 256,
        n_blocks: int | None = None,
        n_global_blocks: int = 2,
        base_width: int = 64,
        global_width: int | None = None,
        pool: str = "max",
    ) -> None:
        super().__init__()
        _check_common(in_channels, input_size, z_dim)
        if pool not in self.POOLS:
            raise SettingError(f"pool={pool!r}: choose one of {self.POOLS}", setting="pool")
        if input_size < 8:
            raise SettingError(f"input_size={input_size}: the conv encoder needs images of at least 8 px", setting="input_size")
        if n_blocks is None:
            n_blocks = max(1, math.ceil(math.log2(input_size / 4)))
        positive_int("n_blocks", n_blocks)
        if input_size / 2**n_blocks < 1:
            raise SettingError(
                f"input_size={input_size} is too small for n_blocks={n_blocks} "
                f"(each block halves the image); use fewer blocks or larger images",
                setting="input_size",
            )
        non_negative_int("n_global_blocks", n_global_blocks)
        positive_int("base_width", base_width)
        if global_width is not None and (global_width < 1 or n_global_blocks == 0):
            raise SettingError(f"global_width={global_width}: must be >= 1, with n_global_blocks >= 1", setting="global_width")
        widths = [min(base_width * 2**i, 512) for i in range(n_blocks)]
        blocks, c = [], in_channels
        for w in widths:
            blocks.append(_conv_block(c, w, pool=True))
            c = w
        self.local_net = nn.Sequential(*blocks)
        self.local_channels = c
        g = (global_width or c) if n_global_blocks else c  # channels of the pooled vector
        self.global_net = nn.Sequential(*[_conv_block(c if i == 0 else g, g, pool=False) for i in range(n_global_blocks)])
        # Names of the maps forward(x, maps=...) can return: the output of each block.
        self._local_names = [f"block{i + 1}" for i in range(n_blocks)]
        self._global_names = [f"global{i + 1}" for i in range(n_global_blocks)]
        self.map_channels = {**dict(zip(self._local_names, widths)), **{n: g for n in self._global_names}}
        self.local_map = self._local_names[-1]
        self.local_size = _map_size(input_size, n_blocks)
        self.pool = pool
        pooled = g * self.local_size**2 if pool == "flatten" else g
        self.mu = nn.Linear(pooled, z_dim)
        self.logvar = nn.Linear(pooled, z_dim)
        self.z_dim = z_dim

    def forward(self, x: torch.Tensor, maps: tuple[str, ...] = ()) -> EncoderOutput:
        if maps:
            local, h, found = _run_named(x, self, maps)
        else:
            local = self.local_net(x)
            h = self.global_net(local)
            found = ()
        if self.pool == "max":
            h = h.amax(dim=(2, 3))
        elif self.pool == "avg":
            h = h.mean(dim=(2, 3))
        else:
            h = h.flatten(1)
        return EncoderOutput(local, self.mu(h), self.logvar(h), found, h)


class ResNet18Encoder(Encoder):
    """torchvision's ResNet-18 with a CIFAR stem (3x3 first conv, stride 1, no max-pool).

    The local map is the output of ``local_stage`` (``layer3`` by default: 8x8x256 at 32 px); the
    remaining stages and a global average pool feed linear mu and log sigma^2 heads.
    """

    _STAGES = ("layer1", "layer2", "layer3", "layer4")

    def __init__(self, in_channels: int = 3, input_size: int = 32, z_dim: int = 256, local_stage: str = "layer3") -> None:
        super().__init__()
        _check_common(in_channels, input_size, z_dim)
        if input_size < 16:
            raise SettingError(
                f"input_size={input_size}: the resnet18 encoder needs images of at least 16 px", setting="input_size"
            )
        if local_stage not in self._STAGES[:-1]:
            raise SettingError(f"local_stage={local_stage!r}: choose one of {self._STAGES[:-1]}", setting="local_stage")
        from torchvision.models import resnet18  # imported lazily: torchvision is slow to import

        net = resnet18(weights=None)
        net.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
        cut = self._STAGES.index(local_stage) + 1
        self.local_net = nn.Sequential(net.conv1, net.bn1, net.relu, *[getattr(net, s) for s in self._STAGES[:cut]])
        self.global_net = nn.Sequential(*[getattr(net, s) for s in self._STAGES[cut:]])
        self.local_channels = {"layer1": 64, "layer2": 128, "layer3": 256}[local_stage]
        self.local_size = _map_size(input_size, cut - 1)
        # Names of the maps forward(x, maps=...) can return: the output of each stage (the stem's
        # three modules have none).
        self._local_names = [None, None, None, *self._STAGES[:cut]]
        self._global_names = list(self._STAGES[cut:])
        self.map_channels = {"layer1": 64, "layer2": 128, "layer3": 256, "layer4": 512}
        self.local_map = local_stage
        self.mu = nn.Linear(512, z_dim)
        self.logvar = nn.Linear(512, z_dim)
        self.z_dim = z_dim

    def forward(self, x: torch.Tensor, maps: tuple[str, ...] = ()) -> EncoderOutput:
        if maps:
            local, h, found = _run_named(x, self, maps)
            h = h.mean(dim=(2, 3))
        else:
            local = self.local_net(x)
            h = self.global_net(local).mean(dim=(2, 3))
            found = ()
        return EncoderOutput(local, self.mu(h), self.logvar(h), found, h)


ARCHITECTURES: dict[str, type[Encoder]] = {"conv": ConvEncoder, "resnet18": ResNet18Encoder}


def build_encoder(arch: str, **kwargs) -> Encoder:
    """Builds an encoder by name; unknown names raise ``ValueError`` listing the known ones."""
    if arch not in ARCHITECTURES:
        raise SettingError(f"arch={arch!r} is not a known architecture; choose one of {sorted(ARCHITECTURES)}", setting="arch")
    return ARCHITECTURES[arch](**kwargs)


def check_maps(encoder: nn.Module, names) -> list[int]:
    """The channels of each feature map named in ``names`` (``ValueError`` quoting the setting for
    a name the encoder lacks, C(x) itself, or a repeat)."""
    known = getattr(encoder, "map_channels", {})
    names = list(names)
    for name in names:
        if name not in known:
            raise SettingError(
                f"extra_local_maps={names!r}: {name!r} is not a map of this encoder; choose among {sorted(known)}",
                setting="extra_local_maps",
            )
        if name == encoder.local_map:
            raise SettingError(
                f"extra_local_maps={names!r}: {name!r} is the local map C(x) itself, already in the local term",
                setting="extra_local_maps",
            )
    if len(set(names)) != len(names):
        raise SettingError(f"extra_local_maps={names!r}: a map is named twice", setting="extra_local_maps")
    return [known[n] for n in names]


def _run_named(x: torch.Tensor, encoder: nn.Module, maps: tuple[str, ...]):
    """Runs ``local_net`` then ``global_net`` module by module (the same computation as calling
    them), keeping the outputs named in ``maps``: (local map, last map, maps in the order asked)."""
    found: dict[str, torch.Tensor] = {}
    # Attributes of our encoders that nn.Module's __getattr__ types as Tensor | Module.
    local_names, global_names = cast("list[str]", encoder._local_names), cast("list[str]", encoder._global_names)
    local_net, global_net = cast(nn.Sequential, encoder.local_net), cast(nn.Sequential, encoder.global_net)
    h = x
    for name, block in zip(local_names, local_net):
        h = block(h)
        if name in maps:
            found[name] = h
    local = h
    for name, block in zip(global_names, global_net):
        h = block(h)
        if name in maps:
            found[name] = h
    missing = [m for m in maps if m not in found]
    if missing:
        map_channels = cast("dict[str, int]", encoder.map_channels)
        raise SettingError(
            f"maps={maps!r}: {missing} not maps of this encoder; choose among {sorted(map_channels)}", setting="maps"
        )
    return local, h, tuple(found[m] for m in maps)


def _check_common(in_channels: int, input_size: int, z_dim: int) -> None:
    for setting, value in (("z_dim", z_dim), ("in_channels", in_channels), ("input_size", input_size)):
        positive_int(setting, value)


def _map_size(size: int, n_halvings: int) -> int:
    for _ in range(n_halvings):
        size = math.ceil(size / 2)
    return size
