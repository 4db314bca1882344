"""Errors of the apply layer."""

from __future__ import annotations


class ApplyError(Exception):
    """Desired state could not be written; the message says what and where."""
