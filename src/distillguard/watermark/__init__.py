"""Statistical watermarks on generated answers, keyed by the provider's secret.

Schemes (one module each, one interface, ``base.WatermarkScheme``):

* ``kgw``     -- green lists (Kirchenbauer et al. 2023), exact binomial test;
* ``gumbel``  -- Gumbel-max / Aaronson, distortion-free, exact Gamma test;
* ``synthid`` -- tournament sampling (Dathathri et al. 2024), exact binomial mean-g test.

``build_scheme`` is the one factory the gateway and the other rooms call; a scheme is a
``TokenSampler`` for ``distillguard.models.engine.GenerationEngine`` and a detector.
Text-level detection lives in ``detect.py``; keys in ``keys.py``.
"""

from __future__ import annotations

from typing import Any

from distillguard.errors import WatermarkError
from distillguard.watermark.base import AccountMatch, DetectionResult, WatermarkScheme
from distillguard.watermark.gumbel import GumbelParams, GumbelScheme
from distillguard.watermark.kgw import KGWParams, KGWScheme
from distillguard.watermark.synthid import SynthIDParams, SynthIDScheme

SCHEMES: dict[str, tuple[type[WatermarkScheme], type]] = {
    "kgw": (KGWScheme, KGWParams),
    "gumbel": (GumbelScheme, GumbelParams),
    "synthid": (SynthIDScheme, SynthIDParams),
}


def build_scheme(
    name: str, *, secret: bytes, key_id: int, vocab_size: int, **params: Any
) -> WatermarkScheme:
    """A watermark scheme by name; ``params`` are fields of the scheme's params dataclass
    (e.g. ``build_scheme("kgw", ..., gamma=0.25, delta=2.0)``)."""
    if name not in SCHEMES:
        raise WatermarkError(
            f"unknown watermark scheme {name!r}; choose one of "
            f"{sorted(SCHEMES)} (or 'off' at the gateway)"
        )
    cls, params_cls = SCHEMES[name]
    try:
        p = params_cls(**params)
    except TypeError as exc:
        raise WatermarkError(f"bad parameters for {name}: {exc}") from None
    return cls(secret=secret, key_id=key_id, vocab_size=vocab_size, params=p)


def __getattr__(name: str) -> Any:
    # detect.py imports build_scheme from here: expose its API lazily, without a cycle
    if name in ("detect_text", "TextDetector"):
        from distillguard.watermark import detect

        return getattr(detect, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
