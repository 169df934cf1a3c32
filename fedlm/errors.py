"""fedlm's exceptions: one root, so a caller can tell fedlm's refusals from anything else that breaks."""

from __future__ import annotations


class FedlmError(Exception):
    """Root of fedlm's own errors; the message is meant for the user, one line, no traceback needed."""


class ConfigError(FedlmError, ValueError):
    """A config value that fedlm cannot run with; the message names the key, the value and what is allowed.
    Commands print it as `config error: ...` and exit 2."""


class RunFailed(FedlmError, RuntimeError):
    """The run cannot go on (diverged, a checkpoint cannot be written, ...): the message says why and what was
    kept; fedlm prints it without a traceback and exits 1."""
