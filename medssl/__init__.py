"""medssl: self-supervised foundation models for radiology and computational pathology."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("medssl")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+unknown"
