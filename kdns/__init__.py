"""kdns: an in-cluster DNS server for Kubernetes, with a small service proxy beside it."""

__version__ = "0.1.0"
