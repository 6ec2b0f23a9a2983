"""Statistical watermarks on generated answers, keyed by the provider's secret.

Schemes (one module each, one interface, ``base.WatermarkScheme``):

* ``kgw``     -- green lists (Kirchenbauer et al. 2023), exact binomial test;
* ``gumbel``  -- Gumbel-max / Aaronson, distortion-free, exact Gamma test;
* ``synthid`` -- tournament sampling (Dathathri et al. 2024), exact binomial mean-g test.

``schemes.build_scheme`` is the one factory the gateway and the other rooms call; a scheme is a
``TokenSampler`` for ``distillguard.models.engine.GenerationEngine`` and a detector.
Text-level detection lives in ``detect.py``; keys in ``keys.py``.
"""

from __future__ import annotations

from distillguard.watermark.base import AccountMatch, DetectionResult, WatermarkScheme
from distillguard.watermark.detect import TextDetector, detect_text
from distillguard.watermark.gumbel import GumbelParams
from distillguard.watermark.kgw import KGWParams
from distillguard.watermark.schemes import SCHEMES, build_scheme
from distillguard.watermark.synthid import SynthIDParams

__all__ = [
    "SCHEMES",
    "AccountMatch",
    "DetectionResult",
    "GumbelParams",
    "KGWParams",
    "SynthIDParams",
    "TextDetector",
    "WatermarkScheme",
    "build_scheme",
    "detect_text",
]
