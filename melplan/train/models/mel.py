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

    def __init__(self, base: str, blocks: int, num_classes: int, *, num_coarse: int | None = None) -> None:
        super().__init__()
        net = build_base(base, num_classes=num_classes)
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
        self.exit = (
            BaseHead(net.head, self.channels, num_coarse)
            if self.full
            else ExitHead(self.channels, num_classes, num_coarse=num_coarse)
        )

    def forward(self, x: torch.Tensor):
        f = self.body(x)
        logits, coarse = self.exit(f)
        return f, logits, coarse


class FCCombiner(nn.Module):
    def __init__(self, in_channels: Sequence[int], num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(sum(in_channels), num_classes)

    def forward(self, *maps: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.cat([torch.flatten(F.adaptive_avg_pool2d(m, 1), 1) for m in maps], 1))


class CNNCombiner(nn.Module):
    def __init__(self, in_channels: Sequence[int], num_classes: int, *, size: int) -> None:
        super().__init__()
        self.size = size
        self.conv = nn.Sequential(
            nn.Conv2d(sum(in_channels), COMBINER_CHANNELS, 1, bias=False),
            nn.BatchNorm2d(COMBINER_CHANNELS),
            nn.SiLU(inplace=True),
        )
        self.drop = nn.Dropout(0.2)
        self.fc = nn.Linear(COMBINER_CHANNELS, num_classes)

    def forward(self, *maps: torch.Tensor) -> torch.Tensor:
        x = torch.cat([F.adaptive_avg_pool2d(m, self.size) for m in maps], 1)
        return self.fc(self.drop(torch.flatten(F.adaptive_avg_pool2d(self.conv(x), 1), 1)))


class SharedCombiner(nn.Module):
    """One combiner for every subset; missing upstreams are replaced by learned placeholder maps."""

    def __init__(self, names: Sequence[str], in_channels: Sequence[int], num_classes: int, *, size: int) -> None:
        super().__init__()
        self.names = list(names)
        self.size = size
        self.placeholders = nn.ParameterDict(
            {n: nn.Parameter(torch.zeros(1, c, size, size)) for n, c in zip(names, in_channels)}
        )
        self.conv = nn.Sequential(nn.Conv2d(sum(in_channels), COMBINER_CHANNELS, 1), nn.SiLU(inplace=True))
        self.drop = nn.Dropout(0.2)
        self.fc = nn.Linear(COMBINER_CHANNELS, num_classes)

    def forward_subset(self, maps: dict[str, torch.Tensor]) -> torch.Tensor:
        b = next(iter(maps.values())).shape[0]
        parts = [
            F.adaptive_avg_pool2d(maps[n], self.size) if n in maps else self.placeholders[n].expand(b, -1, -1, -1)
            for n in self.names
        ]
        x = self.conv(torch.cat(parts, 1))
        return self.fc(self.drop(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)))


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
        self.names = [f"u{i + 1}" for i in range(len(blocks))]
        self.kind = kind
        self.upstreams = nn.ModuleDict(
            {n: Upstream(base, b, num_classes, num_coarse=num_coarse) for n, b in zip(self.names, blocks)}
        )
        chans = {n: u.channels for n, u in self.upstreams.items()}
        sizes = {n: _spatial(base, b) for n, b in zip(self.names, blocks)}
        self.subsets = [s for s in subsets_of(self.names)]
        self.combiners = nn.ModuleDict()
        if len(self.names) > 1:
            if kind == "shared":
                self.combiners["shared"] = SharedCombiner(
                    self.names, [chans[n] for n in self.names], num_classes, size=min(sizes.values())
                )
            elif kind in ("fc", "cnn"):
                for s in self.subsets:
                    if len(s) < 2:
                        continue
                    ch = [chans[n] for n in s]
                    self.combiners["+".join(s)] = (
                        FCCombiner(ch, num_classes)
                        if kind == "fc"
                        else CNNCombiner(ch, num_classes, size=min(sizes[n] for n in s))
                    )
            else:
                from melplan.core.errors import InputError

                raise InputError(
                    f"unknown combiner kind '{kind}'", field="combiner", fix=f"use one of {COMBINER_KINDS}"
                )

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
def _spatial(base: str, blocks: int) -> int:
    with torch.no_grad():
        net = build_base(base, num_classes=2)
        x = torch.zeros(1, 3, 32, 32)
        for b in net.blocks[:blocks]:
            b.eval()
            x = b(x)
    return int(x.shape[-1])


def build_mel(
    *, base: str, blocks: Sequence[int], combiner: str, num_classes: int, num_coarse: int | None = None
) -> MELNet:
    return MELNet(
        {
            "base": base,
            "blocks": list(blocks),
            "combiner": combiner,
            "num_classes": num_classes,
            "num_coarse": num_coarse,
        }
    )
