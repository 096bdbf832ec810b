"""MEL networks: upstream prefixes with exit heads, and combiners over upstream features (torch).

An upstream is the first ``blocks`` blocks of a base network's feature stack plus its own exit
head (1x1 conv, BN, SiLU, pool, dropout, linear).  The full reference model is an upstream with
every block and the base's own classifier.  Combiners read upstream *features*, not logits:

* ``fc``: each feature map pooled to a vector (on the upstream's side, so only the vector is sent),
  concatenated, one linear layer. One combiner per subset.
* ``cnn``: feature maps pooled to the smallest spatial size of the subset, concatenated, a 1x1
  convolution to 320 channels with BN and SiLU, pool, linear. One combiner per subset.
* ``shared``: one network for every subset: like ``cnn`` but over all upstreams, with a learned
  placeholder map standing in for each missing upstream, and no batch norm (its statistics would
  mix subsets). Its size grows linearly with n instead of as 2^n.

Bases for other modalities (``BaseNet.modality``: audio spectrograms, token ids) say how their exits
and combiners pool (``pool``: avg or max) and how wide the combiners are; the input shape and dtype
and the base's arguments (a text base's vocabulary size) come from the dataset and are kept in the
network's ``config`` (``input_shape``, ``input_dtype``, ``base_args``), so weights reload alone.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from melplan.train.models.registry import build_base

COMBINER_KINDS = ("fc", "cnn", "shared")
COMBINER_CHANNELS = 320
DEFAULT_INPUT_SHAPE = (3, 32, 32)


def pool_to(x: torch.Tensor, size, kind: str = "avg") -> torch.Tensor:
    """Adaptive average or max pooling of an N x C x H x W map to ``size``."""
    return F.adaptive_max_pool2d(x, size) if kind == "max" else F.adaptive_avg_pool2d(x, size)


def subsets_of(names: Sequence[str]) -> list[tuple[str, ...]]:
    return [c for r in range(1, len(names) + 1) for c in itertools.combinations(names, r)]


class ExitHead(nn.Module):
    def __init__(
        self,
        in_ch: int,
        num_classes: int,
        *,
        hidden: int | None = None,
        num_coarse: int | None = None,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        hidden = hidden or min(1280, 4 * in_ch)
        self.conv = nn.Sequential(
            nn.Conv2d(in_ch, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.SiLU(inplace=True)
        )
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(hidden, num_classes)
        self.coarse = nn.Linear(hidden, num_coarse) if num_coarse else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        h = self.drop(torch.flatten(F.adaptive_avg_pool2d(self.conv(x), 1), 1))
        return self.fc(h), (self.coarse(h) if self.coarse is not None else None)


class PoolExit(nn.Module):
    """A light exit for small bases: pool, dropout, linear (and an optional coarse linear)."""

    def __init__(
        self, in_ch: int, num_classes: int, *, num_coarse: int | None = None, pool: str = "avg", dropout: float = 0.2
    ) -> None:
        super().__init__()
        self.pool = pool
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(in_ch, num_classes)
        self.coarse = nn.Linear(in_ch, num_coarse) if num_coarse else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        h = self.drop(torch.flatten(pool_to(x, 1, self.pool), 1))
        return self.fc(h), (self.coarse(h) if self.coarse is not None else None)


class BaseHead(nn.Module):
    """The base network's own classifier, with an optional coarse head on the pooled features."""

    def __init__(self, head: nn.Module, in_ch: int, num_coarse: int | None) -> None:
        super().__init__()
        self.head = head
        self.coarse = nn.Linear(in_ch, num_coarse) if num_coarse else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        coarse = self.coarse(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)) if self.coarse is not None else None
        return self.head(x), coarse


class Upstream(nn.Module):
    """A prefix of the base's feature stack with its exit head. ``forward`` gives (features, logits, coarse)."""

    def __init__(
        self,
        base: str,
        blocks: int,
        num_classes: int,
        *,
        num_coarse: int | None = None,
        base_args: dict[str, Any] | None = None,
        pretrained: bool = False,
    ) -> None:
        super().__init__()
        net = build_base(base, num_classes=num_classes, pretrained=pretrained, **(base_args or {}))
        if not 1 <= blocks <= len(net.blocks):
            from melplan.core.errors import InputError

            raise InputError(
                f"{base} has {len(net.blocks)} blocks, asked for {blocks}",
                field="blocks",
                fix=f"use 1..{len(net.blocks)} blocks per upstream",
            )
        self.blocks = blocks
        self.full = blocks == len(net.blocks)
        self.body = nn.Sequential(*net.blocks[:blocks])
        self.channels = net.channels[blocks - 1]
        self.pool = net.pool
        self.combiner_channels = net.combiner_channels
        if self.full:
            self.exit: nn.Module = BaseHead(net.head, self.channels, num_coarse)
        elif net.exit == "pool":
            self.exit = PoolExit(self.channels, num_classes, num_coarse=num_coarse, pool=net.pool)
        else:
            self.exit = ExitHead(self.channels, num_classes, num_coarse=num_coarse)

    def forward(self, x: torch.Tensor):
        f = self.body(x)
        logits, coarse = self.exit(f)
        return f, logits, coarse


class FCCombiner(nn.Module):
    def __init__(self, in_channels: Sequence[int], num_classes: int, *, pool: str = "avg") -> None:
        super().__init__()
        self.pool = pool
        self.fc = nn.Linear(sum(in_channels), num_classes)

    def forward(self, *maps: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.cat([torch.flatten(pool_to(m, 1, self.pool), 1) for m in maps], 1))


class CNNCombiner(nn.Module):
    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        *,
        size,
        channels: int = COMBINER_CHANNELS,
        pool: str = "avg",
    ) -> None:
        super().__init__()
        self.size = size
        self.pool = pool
        self.conv = nn.Sequential(
            nn.Conv2d(sum(in_channels), channels, 1, bias=False),
            nn.BatchNorm2d(channels),
            nn.SiLU(inplace=True),
        )
        self.drop = nn.Dropout(0.2)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, *maps: torch.Tensor) -> torch.Tensor:
        x = torch.cat([pool_to(m, self.size, self.pool) for m in maps], 1)
        return self.fc(self.drop(torch.flatten(pool_to(self.conv(x), 1, self.pool), 1)))


class SharedCombiner(nn.Module):
    """One combiner for every subset; missing upstreams are replaced by learned placeholder maps."""

    def __init__(
        self,
        names: Sequence[str],
        in_channels: Sequence[int],
        num_classes: int,
        *,
        size,
        channels: int = COMBINER_CHANNELS,
        pool: str = "avg",
    ) -> None:
        super().__init__()
        self.names = list(names)
        self.size = size
        self.pool = pool
        hw = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        self.placeholders = nn.ParameterDict(
            {n: nn.Parameter(torch.zeros(1, c, *hw)) for n, c in zip(names, in_channels)}
        )
        self.conv = nn.Sequential(nn.Conv2d(sum(in_channels), channels, 1), nn.SiLU(inplace=True))
        self.drop = nn.Dropout(0.2)
        self.fc = nn.Linear(channels, num_classes)

    def forward_subset(self, maps: dict[str, torch.Tensor]) -> torch.Tensor:
        b = next(iter(maps.values())).shape[0]
        parts = [
            pool_to(maps[n], self.size, self.pool) if n in maps else self.placeholders[n].expand(b, -1, -1, -1)
            for n in self.names
        ]
        x = self.conv(torch.cat(parts, 1))
        return self.fc(self.drop(torch.flatten(pool_to(x, 1, self.pool), 1)))


class SubsetView(nn.Module):
    """The shared combiner seen as the combiner of one subset (for measurement and tracing)."""

    def __init__(self, shared: SharedCombiner, subset: Sequence[str]) -> None:
        super().__init__()
        self.shared = shared
        self.subset = list(subset)

    def forward(self, *maps: torch.Tensor) -> torch.Tensor:
        return self.shared.forward_subset(dict(zip(self.subset, maps)))


class MELNet(nn.Module):
    """n upstreams and combiners for every subset of two or more; ``forward`` answers every subset."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.config = dict(config)
        base, blocks, kind = config["base"], list(config["blocks"]), config["combiner"]
        num_classes, num_coarse = config["num_classes"], config.get("num_coarse")
        pretrained = bool(config.get("pretrained", False))  # initialisation only; weights files override it
        base_args = dict(config.get("base_args") or {})
        self.input_shape = tuple(config.get("input_shape") or DEFAULT_INPUT_SHAPE)
        self.input_dtype = str(config.get("input_dtype") or "float32")
        self.names = [f"u{i + 1}" for i in range(len(blocks))]
        self.kind = kind
        self.upstreams = nn.ModuleDict(
            {
                n: Upstream(base, b, num_classes, num_coarse=num_coarse, base_args=base_args, pretrained=pretrained)
                for n, b in zip(self.names, blocks)
            }
        )
        first = next(iter(self.upstreams.values()))
        pool, width = first.pool, first.combiner_channels
        chans = {n: u.channels for n, u in self.upstreams.items()}
        args_key = tuple(sorted(base_args.items()))
        sizes = {n: _spatial(base, b, self.input_shape, self.input_dtype, args_key) for n, b in zip(self.names, blocks)}
        self.subsets = [s for s in subsets_of(self.names)]
        self.combiners = nn.ModuleDict()
        if len(self.names) > 1:
            if kind == "shared":
                self.combiners["shared"] = SharedCombiner(
                    self.names,
                    [chans[n] for n in self.names],
                    num_classes,
                    size=_smallest(sizes.values()),
                    channels=width,
                    pool=pool,
                )
            elif kind in ("fc", "cnn"):
                for s in self.subsets:
                    if len(s) < 2:
                        continue
                    ch = [chans[n] for n in s]
                    self.combiners["+".join(s)] = (
                        FCCombiner(ch, num_classes, pool=pool)
                        if kind == "fc"
                        else CNNCombiner(
                            ch, num_classes, size=_smallest(sizes[n] for n in s), channels=width, pool=pool
                        )
                    )
            else:
                from melplan.core.errors import InputError

                raise InputError(
                    f"unknown combiner kind '{kind}'", field="combiner", fix=f"use one of {COMBINER_KINDS}"
                )

    def example_input(self, batch: int = 1, *, seed: int = 0) -> torch.Tensor:
        """A seeded input batch of the network's input shape and dtype (token ids for text)."""
        gen = torch.Generator().manual_seed(seed)
        if self.input_dtype == "int64":
            vocab = int((self.config.get("base_args") or {}).get("vocab_size", 2))
            return torch.randint(0, vocab, (batch, *self.input_shape), generator=gen)
        return torch.randn(batch, *self.input_shape, generator=gen)

    def combiner_for(self, subset: Sequence[str]) -> nn.Module:
        """The module that answers ``subset`` from its feature maps (``module(*maps)``)."""
        if self.kind == "shared":
            return SubsetView(self.combiners["shared"], subset)
        return self.combiners["+".join(subset)]

    def forward(self, x: torch.Tensor, subsets: Sequence[tuple[str, ...]] | None = None):
        """One forward pass of every upstream; returns ({key: logits}, {upstream: coarse logits})."""
        feats, out, coarse = {}, {}, {}
        for n, u in self.upstreams.items():
            f, logits, c = u(x)
            feats[n], out[n] = f, logits
            if c is not None:
                coarse[n] = c
        out.update(self.combine(feats, subsets))
        return out, coarse

    def combine(self, feats: dict[str, torch.Tensor], subsets: Sequence[tuple[str, ...]] | None = None):
        out = {}
        for s in subsets or self.subsets:
            if len(s) >= 2:
                out["+".join(s)] = self.combiner_for(s)(*[feats[n] for n in s])
        return out


@functools.cache
def _spatial(
    base: str,
    blocks: int,
    input_shape: tuple[int, ...] = DEFAULT_INPUT_SHAPE,
    input_dtype: str = "float32",
    base_args: tuple = (),
) -> tuple[int, int]:
    """(height, width) of the feature map after ``blocks`` blocks. Builds a throw-away base under a
    forked random state, so that whether the answer was cached does not change the initialisation of
    the network being built (same spec and seed, same family, whatever was trained before)."""
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        net = build_base(base, num_classes=2, **dict(base_args))
        dtype = torch.int64 if input_dtype == "int64" else torch.float32
        x = torch.zeros(1, *input_shape, dtype=dtype)
        for b in net.blocks[:blocks]:
            b.eval()
            x = b(x)
    return int(x.shape[-2]), int(x.shape[-1])


def _smallest(sizes) -> int | tuple[int, int]:
    """The smallest height and width among feature maps; an int where the result is square (as before)."""
    sizes = list(sizes)
    h, w = min(s[0] for s in sizes), min(s[1] for s in sizes)
    return h if h == w else (h, w)


def build_mel(
    *,
    base: str,
    blocks: Sequence[int],
    combiner: str,
    num_classes: int,
    num_coarse: int | None = None,
    input_shape: Sequence[int] | None = None,
    input_dtype: str | None = None,
    base_args: dict[str, Any] | None = None,
    pretrained: bool = False,
) -> MELNet:
    """A MEL network; ``input_shape``, ``input_dtype`` and ``base_args`` are only recorded in the
    config when given (image families keep their old config)."""
    config: dict[str, Any] = {
        "base": base,
        "blocks": list(blocks),
        "combiner": combiner,
        "num_classes": num_classes,
        "num_coarse": num_coarse,
    }
    if input_shape is not None and tuple(input_shape) != DEFAULT_INPUT_SHAPE:
        config["input_shape"] = list(input_shape)
    if input_dtype is not None and input_dtype != "float32":
        config["input_dtype"] = input_dtype
    if base_args:
        config["base_args"] = dict(base_args)
    if pretrained:
        config["pretrained"] = True
    return MELNet(config)
