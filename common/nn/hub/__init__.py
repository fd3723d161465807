"""``retia.nn.hub``: known NAS search spaces, written from their papers, as retia model spaces.

Each is a :class:`~retia.nn.ModelSpace`: built as it is, the supernet; ``space.freeze(arch)`` (or
``with fixed_arch(arch): Space(...)``) the chosen network. Their constructor arguments default to
the papers' ImageNet settings and scale them down (widths, strides, depths, candidates) to small
data such as the 8x8 digits. Labels follow NNI's hub (``nni.nas.hub.pytorch``), so an architecture
NNI exports for the same space loads as it is.

- :class:`ProxylessNAS`: MBConv blocks, each a LayerChoice of kernel size x expansion ratio, and
  searched stage depths.
- :class:`MobileNetV3Space`: widths, expansion ratios and kernel sizes as ValueChoices inside the
  layers, searched depths and optional squeeze-excite.
- :class:`DARTS`: normal and reduction :class:`~retia.nn.Cell` s, each decision shared by every cell
  of its kind (``normal/...``, ``reduce/...``).
- :class:`NasBench201`: three stacks of :class:`~retia.nn.NasBench201Cell`, every cell one decision
  per edge (``cell/0_1`` ...).
"""

from __future__ import annotations

from .darts import DARTS
from .mobilenetv3 import MobileNetV3Space, SqueezeExcite
from .nasbench201 import NasBench201
from .proxylessnas import ConvBNReLU, DepthwiseSeparableConv, InvertedResidual, ProxylessNAS, make_divisible

__all__ = [
    "ConvBNReLU",
    "DARTS",
    "DepthwiseSeparableConv",
    "InvertedResidual",
    "MobileNetV3Space",
    "NasBench201",
    "ProxylessNAS",
    "SqueezeExcite",
    "make_divisible",
]
