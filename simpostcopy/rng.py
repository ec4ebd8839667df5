"""Named random streams: one independent numpy Generator per stochastic process.

Every stream derives from the scenario seed and a stable name, so adding or
changing one process never perturbs the numbers another process draws, and the
same (seed, name) gives the same stream in any process or on any machine.
"""

from __future__ import annotations

import zlib

import numpy as np


def stream(seed: int, name: str) -> np.random.Generator:
    """Return the Generator for stream ``name`` under ``seed`` (stable across runs)."""
    key = zlib.crc32(name.encode("utf-8"))
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(key,))))
