"""qqbridge: a Matrix application service bridging QQ (HTTP protocol 1.1) accounts."""

__version__ = "0.1.0"
