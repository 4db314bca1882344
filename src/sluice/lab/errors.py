"""The one exception the lab raises for anything a user can fix or should know about."""

from __future__ import annotations


class LabError(Exception):
    """A lab operation failed; the message says what, where, and what to do next."""
