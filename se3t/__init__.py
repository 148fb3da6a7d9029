"""se3t: fast, lean SE(3)-Transformers on molecular data."""

__version__ = "0.1.0"
