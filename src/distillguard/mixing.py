"""splitmix64's finalizer, the one 64-bit mixing function of the package.

Used by the watermark's keyed hashes (``watermark/hashing.py``, over ``uint64`` arrays) and by
the monitor's MinHash sketches (``monitor/signals.py``, one Python int at a time, where a
numpy call per value would cost more than the mixing). Both forms compute the same function;
a test holds them equal.
"""

from __future__ import annotations

import numpy as np

U64 = np.uint64
GOLDEN_GAMMA = 0x9E3779B97F4A7C15  # splitmix64's increment (2^64 / golden ratio, odd)
_MUL1 = 0xBF58476D1CE4E5B9
_MUL2 = 0x94D049BB133111EB
_MASK = (1 << 64) - 1


def splitmix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finalizer, elementwise on uint64 (wrapping arithmetic); same shape out."""
    z = x + U64(GOLDEN_GAMMA)
    t = z >> U64(30)  # one scratch array, everything else in place (fewer allocations)
    z ^= t
    z *= U64(_MUL1)
    np.right_shift(z, U64(27), out=t)
    z ^= t
    z *= U64(_MUL2)
    np.right_shift(z, U64(31), out=t)
    z ^= t
    return z


def splitmix64_int(x: int) -> int:
    """The same finalizer on one Python int (taken modulo 2^64)."""
    z = (x + GOLDEN_GAMMA) & _MASK
    z = ((z ^ (z >> 30)) * _MUL1) & _MASK
    z = ((z ^ (z >> 27)) * _MUL2) & _MASK
    return z ^ (z >> 31)
