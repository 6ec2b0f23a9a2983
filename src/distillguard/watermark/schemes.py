"""The scheme registry and its one factory: ``build_scheme(name, secret=, key_id=, ...)``.

Kept apart from the package's ``__init__`` so that the modules that build schemes
(``detect.py``, the engine adapters) import it directly, without a cycle through the package.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from distillguard.errors import WatermarkError
from distillguard.watermark.base import WatermarkScheme
from distillguard.watermark.gumbel import GumbelParams, GumbelScheme
from distillguard.watermark.kgw import KGWParams, KGWScheme
from distillguard.watermark.synthid import SynthIDParams, SynthIDScheme

# name -> (scheme class, its params dataclass); every class takes secret, key_id, vocab_size,
# params (the base class itself does not: hence a callable, not type[WatermarkScheme]).
SCHEMES: dict[str, tuple[Callable[..., WatermarkScheme], type]] = {
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
