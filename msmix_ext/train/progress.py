"""Logging and progress bars of the training command."""
from __future__ import annotations

import logging
import sys

from tqdm.auto import tqdm

__all__ = ["log", "setup_logging", "show_bars"]

log = logging.getLogger("msmix_ext.train")


class _TqdmHandler(logging.Handler):
    """Logging through ``tqdm.write`` so that log lines do not break progress bars."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


def show_bars(quiet: bool) -> bool:
    """Progress bars only on a terminal: redirected, their carriage returns fill a log file."""
    return not quiet and sys.stderr.isatty()


def setup_logging(quiet: bool = False) -> None:
    """Configure the ``msmix_ext.train`` logger for the CLI (INFO, or WARNING when quiet)."""
    log.setLevel(logging.DEBUG)
    for h in list(log.handlers):
        if isinstance(h, _TqdmHandler):
            log.removeHandler(h)
    handler = _TqdmHandler()
    handler.setLevel(logging.WARNING if quiet else logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    log.addHandler(handler)
    log.propagate = False
