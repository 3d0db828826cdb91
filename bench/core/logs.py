"""The suite's messages go through stdlib ``logging``: every module logs to a logger under
``bench`` (``logging.getLogger(__name__)``; plugins under ``bench.extractors.<name>``), and one
handler, installed when ``bench`` is imported, writes them as ``[bench] message`` lines at INFO
to the process's current ``sys.stderr`` (so output captured or redirected later still gets
them). A program embedding the suite can raise the level or replace the handler as usual.
"""

from __future__ import annotations

import logging
import sys

FORMAT = "[bench] %(message)s"


class CurrentStderr(logging.StreamHandler):
    """A stream handler that looks ``sys.stderr`` up at every message."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it; sys.stderr wins
        pass


def install() -> None:
    """The ``bench`` logger's one handler (idempotent): INFO and above, ``FORMAT``."""
    logger = logging.getLogger("bench")
    if any(isinstance(handler, CurrentStderr) for handler in logger.handlers):
        return
    handler = CurrentStderr()
    handler.setFormatter(logging.Formatter(FORMAT))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
