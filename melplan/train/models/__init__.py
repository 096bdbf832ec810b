"""MEL networks built from torchvision bases (torch): upstream prefixes, exit heads, combiners."""

from melplan.train.models.mel import MELNet, Upstream, build_mel
from melplan.train.models.registry import base_names, build_base, register_base

__all__ = ["MELNet", "Upstream", "build_mel", "base_names", "build_base", "register_base"]
