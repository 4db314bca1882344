"""Sluice: an eBPF dataplane for Kubernetes and Linux container hosts."""

__version__ = "0.1.0"
