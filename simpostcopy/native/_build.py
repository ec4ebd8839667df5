"""cffi API-mode builder of ``simpostcopy.native._uffd``, the C userfaultfd microbenchmark.

Used by setup.py (``pip install .`` / ``pip install -e .``); ``python
simpostcopy/native/_build.py`` from the repository root also builds it in place.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
# Relative to the working directory (setup.py runs from the project root): setuptools
# wants relative source paths.
_DIR = os.path.relpath(HERE)


def _declarations() -> str:
    """The part of uffd_bench.h between the cdef markers: one source of truth for both."""
    header = (HERE / "uffd_bench.h").read_text()
    match = re.search(r"/\* cdef-begin \*/(.*)/\* cdef-end \*/", header, re.S)
    if match is None:
        raise RuntimeError("uffd_bench.h lost its cdef-begin/cdef-end markers")
    return match.group(1)


ffibuilder = FFI()
ffibuilder.cdef(_declarations())
ffibuilder.set_source(
    "simpostcopy.native._uffd",
    '#include "uffd_bench.h"',
    sources=[os.path.join(_DIR, "uffd_bench.c")],
    include_dirs=[_DIR],
    depends=[os.path.join(_DIR, "uffd_bench.h")],
    extra_compile_args=["-O2", "-D_GNU_SOURCE", "-pthread"],
    extra_link_args=["-pthread"],
    libraries=["pthread"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
