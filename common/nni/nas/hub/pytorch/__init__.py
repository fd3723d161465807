"""NNI 3.0's ``nni.nas.hub.pytorch``: the spaces of :mod:`retia.nn.hub`, under NNI's labels."""

from __future__ import annotations

from retia.nn.hub import DARTS, MobileNetV3Space, NasBench201, ProxylessNAS

__all__ = ["DARTS", "MobileNetV3Space", "NasBench201", "ProxylessNAS"]
