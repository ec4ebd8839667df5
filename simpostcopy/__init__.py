"""simpostcopy: a discrete-event simulator of postcopy live-migration page faults."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("simpostcopy")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
