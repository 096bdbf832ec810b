"""Base networks by name: each builder returns the feature stack as a list of blocks (torch).

Builders are registered with a decorator that refuses duplicates, take keyword-only arguments and
never download weights (``weights=None``: every model trains from scratch on the user's data).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

_BASES: dict[str, Callable[..., BaseNet]] = {}


@dataclass
class BaseNet:
    blocks: list[nn.Module]  # the feature stack; a prefix of it is an upstream
    head: nn.Module  # the base's own classifier (pool included), used by the full model
    channels: list[int]  # output channels after each block


def register_base(name: str):
    def deco(fn: Callable[..., BaseNet]) -> Callable[..., BaseNet]:
        if name in _BASES:
            raise ValueError(f"base network '{name}' is already registered")
        _BASES[name] = fn
        return fn

    return deco


def base_names() -> list[str]:
    return sorted(_BASES)


def build_base(name: str, *, num_classes: int) -> BaseNet:
    try:
        fn = _BASES[name]
    except KeyError:
        from melplan.core.errors import InputError

        raise InputError(
            f"unknown base network '{name}'", field="base", fix=f"use one of: {', '.join(base_names())}"
        ) from None
    return fn(num_classes=num_classes)


def _out_channels(blocks: list[nn.Module]) -> list[int]:
    import torch

    x = torch.zeros(1, 3, 32, 32)
    chans = []
    with torch.no_grad():
        for b in blocks:
            b.eval()
            x = b(x)
            chans.append(x.shape[1])
    return chans


@register_base("efficientnet_b0")
def efficientnet_b0(*, num_classes: int) -> BaseNet:
    from torchvision.models import efficientnet_b0 as tv

    m = tv(weights=None, num_classes=num_classes)
    blocks = list(m.features)
    return BaseNet(blocks, nn.Sequential(m.avgpool, nn.Flatten(1), m.classifier), _out_channels(blocks))


@register_base("mobilenet_v3_small")
def mobilenet_v3_small(*, num_classes: int) -> BaseNet:
    from torchvision.models import mobilenet_v3_small as tv

    m = tv(weights=None, num_classes=num_classes)
    blocks = list(m.features)
    return BaseNet(blocks, nn.Sequential(m.avgpool, nn.Flatten(1), m.classifier), _out_channels(blocks))


@register_base("resnet18")
def resnet18(*, num_classes: int) -> BaseNet:
    from torchvision.models import resnet18 as tv

    m = tv(weights=None, num_classes=num_classes)
    blocks = [nn.Sequential(m.conv1, m.bn1, m.relu, m.maxpool), m.layer1, m.layer2, m.layer3, m.layer4]
    return BaseNet(blocks, nn.Sequential(m.avgpool, nn.Flatten(1), m.fc), _out_channels(blocks))
