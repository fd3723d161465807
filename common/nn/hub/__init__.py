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
"""

from __future__ import annotations

from .mobilenetv3 import MobileNetV3Space, SqueezeExcite
from .proxylessnas import ConvBNReLU, DepthwiseSeparableConv, InvertedResidual, ProxylessNAS, make_divisible

__all__ = [
    "ConvBNReLU",
    "DepthwiseSeparableConv",
    "InvertedResidual",
    "MobileNetV3Space",
    "ProxylessNAS",
    "SqueezeExcite",
    "make_divisible",
]
