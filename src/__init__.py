"""ISDR, the InferenceServer DICOM Relay."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("isdr")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"
