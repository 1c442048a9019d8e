"""qqbridge: a Matrix application service bridging QQ (HTTP protocol 1.1) accounts."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("qqbridge")  # pyproject.toml's, as installed
except PackageNotFoundError:  # a source tree run without installing it
    __version__ = "0+unknown"
