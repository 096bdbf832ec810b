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
    modality: str = "image"  # what the first block reads: image (N x 3 x H x W), audio (N x 1 x mels x frames),
    # text (N x L token ids); every block outputs N x C x H x W (text: H = 1)
    exit: str = "conv"  # exit heads: "conv" (1x1 conv, BN, SiLU, pool, linear) or "pool" (pool, dropout, linear)
    pool: str = "avg"  # how exits and combiners pool feature maps: "avg" or "max" (max over time for text)
    combiner_channels: int = 320  # width of the cnn/shared combiners' 1x1 convolution


def register_base(name: str):
    def deco(fn: Callable[..., BaseNet]) -> Callable[..., BaseNet]:
        if name in _BASES:
            raise ValueError(f"base network '{name}' is already registered")
        _BASES[name] = fn
        return fn

    return deco


def base_names() -> list[str]:
    return sorted(_BASES)


def build_base(name: str, *, num_classes: int, **base_args) -> BaseNet:
    """Build a registered base; ``base_args`` (e.g. ``vocab_size`` for text bases) come from the dataset."""
    try:
        fn = _BASES[name]
    except KeyError:
        from melplan.core.errors import InputError

        raise InputError(
            f"unknown base network '{name}'", field="base", fix=f"use one of: {', '.join(base_names())}"
        ) from None
    return fn(num_classes=num_classes, **base_args)


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


class _DSBlock(nn.Sequential):
    """Depthwise-separable convolution: 3x3 depthwise + BN + ReLU, 1x1 pointwise + BN + ReLU."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__(
            nn.Conv2d(cin, cin, 3, stride=stride, padding=1, groups=cin, bias=False),
            nn.BatchNorm2d(cin),
            nn.ReLU(inplace=True),
            nn.Conv2d(cin, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


DSCNN_CHANNELS = (32, 32, 64, 64, 128, 128)


@register_base("dscnn")
def dscnn(*, num_classes: int) -> BaseNet:
    """A small DS-CNN keyword-spotting network (Zhang et al., "Hello Edge", 2017) over log-mel
    spectrograms (1 x mels x frames): a strided 3x3 stem and five depthwise-separable blocks
    (32, 32, 64, 64, 128, 128 channels; stride 2 at blocks 3 and 5), global average pooling and a
    linear classifier. Six blocks, about 40k parameters: the size practitioners deploy for spoken
    commands on microcontrollers, so every prefix is a realistic edge model."""
    c = DSCNN_CHANNELS
    blocks: list[nn.Module] = [
        nn.Sequential(nn.Conv2d(1, c[0], 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c[0]), nn.ReLU(True)),
        _DSBlock(c[0], c[1], 1),
        _DSBlock(c[1], c[2], 2),
        _DSBlock(c[2], c[3], 1),
        _DSBlock(c[3], c[4], 2),
        _DSBlock(c[4], c[5], 1),
    ]
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Dropout(0.2), nn.Linear(c[-1], num_classes))
    return BaseNet(blocks, head, list(c), modality="audio", exit="pool", combiner_channels=64)


class _Embed(nn.Module):
    """Token ids N x L -> embeddings as an N x E x 1 x L map (a 1-row image for the conv blocks)."""

    def __init__(self, vocab_size: int, dim: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.drop = nn.Dropout(0.25)

    def forward(self, ids):
        return self.drop(self.embed(ids)).transpose(1, 2).unsqueeze(2)


class _Conv1d(nn.Sequential):
    """A width-k convolution along the sentence (as a 1 x k Conv2d), BN, ReLU."""

    def __init__(self, cin: int, cout: int, k: int = 3) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, (1, k), padding=(0, k // 2), bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
        )


TEXTCNN_DIM = 64
TEXTCNN_CHANNELS = (TEXTCNN_DIM, 96, 96, 128, 128)


@register_base("textcnn")
def textcnn(*, num_classes: int, vocab_size: int = 2) -> BaseNet:
    """A small stacked CNN over word embeddings trained from scratch (no pretrained vectors): an
    embedding block (64 dimensions, vocabulary from the training split) and four width-3
    convolutions (96, 96, 128, 128 channels), max-pooling over time and a linear classifier: the
    CNN-rand baseline of Kim (2014) made deep so that its prefixes are models of their own."""
    c = TEXTCNN_CHANNELS
    blocks: list[nn.Module] = [_Embed(vocab_size, c[0])] + [_Conv1d(c[i], c[i + 1]) for i in range(len(c) - 1)]
    head = nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten(1), nn.Dropout(0.5), nn.Linear(c[-1], num_classes))
    return BaseNet(blocks, head, list(c), modality="text", exit="pool", pool="max", combiner_channels=64)
