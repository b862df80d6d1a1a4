"""The one user-facing error type."""

from __future__ import annotations


class PipelineError(Exception):
    """A user-facing error: the CLI prints its message on one line (no traceback) and exits with status 2."""
