"""Builds the optional C extension simpostcopy.native._uffd (the userfaultfd benchmark).

Metadata lives in pyproject.toml. The extension is optional: without a C compiler, the
Python headers or the Linux headers the install still succeeds, the simulator works, and
``simpostcopy.native.unavailable_reason()`` says what is missing.
"""

import importlib.util
from pathlib import Path

from setuptools import Extension, setup


def native_extension() -> Extension:
    """The cffi-generated extension, marked optional so a failed compile only warns."""
    path = Path(__file__).resolve().parent / "simpostcopy" / "native" / "_build.py"
    spec = importlib.util.spec_from_file_location("_simpostcopy_uffd_build", path)
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    ext = builder.ffibuilder.distutils_extension(tmpdir="build/cffi", verbose=False)
    ext.optional = True
    return ext


setup(ext_modules=[native_extension()])
