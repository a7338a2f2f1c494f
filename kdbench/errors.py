"""The errors kdbench raises on purpose: each becomes one line and exit status 2 in the CLI."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataNotFoundError",
    "KdbenchError",
    "NonFiniteLossError",
    "OutputError",
    "StoreError",
    "TeacherTooWeakError",
    "Terminated",
    "check_termination",
    "first_line",
    "held_signals",
    "request_termination",
]


class KdbenchError(Exception):
    """Base class: a known failure with a one-line message that names the field and the fix."""


class ConfigError(KdbenchError, ValueError):
    """The study file or an override is invalid."""


class DataNotFoundError(KdbenchError, FileNotFoundError):
    """A dataset's files were not found in any of the places kdbench looks."""


class CheckpointError(KdbenchError):
    """A checkpoint or cache file cannot be used (not a state dict, wrong classes, unsafe)."""


class OutputError(KdbenchError):
    """An output folder or file (cache, report) cannot be written."""


class StoreError(KdbenchError):
    """The results database cannot be used as asked."""


class RetiredAttemptError(StoreError):
    """This worker's attempt at a visit was retired by another worker (taken over after a missed heartbeat):
    its writes are refused, and the trial it was training is dropped."""


class TeacherTooWeakError(KdbenchError):
    """The teacher is not accurate enough to distil from."""


class NonFiniteLossError(KdbenchError, FloatingPointError):
    """The training loss became NaN or infinite.

    Attributes:
        step: the 0-based optimisation step at which it was detected.
        epoch: the 0-based epoch of that step.
    """

    def __init__(self, step: int, epoch: int, value: float) -> None:
        self.step = step
        self.epoch = epoch
        self.value = value
        super().__init__(
            f"training loss became {value} at step {step} (epoch {epoch}); "
            "lower the learning rate or check the inputs"
        )


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, for embedding it in a one-line error.

    Args:
        exc: the exception; a wrapper's underlying error (``exc.orig``, e.g. the database driver's
            exception under SQLAlchemy's) speaks for it when it has one.

    Returns:
        The first line of the message once white space around the whole message is stripped; the name
        of ``exc``'s type when the message is blank.
    """
    text = str(getattr(exc, "orig", exc)).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class Terminated(KeyboardInterrupt):
    """SIGTERM (what a cluster scheduler or ``kill`` sends before it kills), raised where Ctrl-C would be so
    that the current trial is recorded as interrupted in the same way."""


_TERMINATION = threading.Event()
_HOLDING = 0  # > 0 while :func:`held_signals` runs a write that must land whole (main thread only)


def request_termination() -> None:
    """Note that SIGTERM arrived and raise :class:`Terminated` where it lands (the CLI's SIGTERM handler).

    Inside :func:`held_signals` it is only noted, and raised when the held block ends; if the point where it
    lands swallows it (a finaliser, say), :func:`check_termination` raises it again at the sweep's next safe
    point.
    """
    _TERMINATION.set()
    if _HOLDING == 0:
        raise Terminated("SIGTERM")


def check_termination() -> None:
    """Raise :class:`Terminated` if SIGTERM arrived (called between epochs and before each claim)."""
    if _TERMINATION.is_set():
        raise Terminated("SIGTERM")


@contextlib.contextmanager
def held_signals() -> Iterator[None]:
    """Hold SIGTERM and Ctrl-C while the block writes something that must land whole (a run's row and its
    Optuna trial's state; a new Optuna trial and the run's link to it); the signal is raised when the block ends.

    A signal raised at an arbitrary line could otherwise fall between the two writes and leave an Optuna trial
    RUNNING with its run finished, or a trial no run points to. A second Ctrl-C inside the block interrupts at
    once (a write stuck on a lock stays interruptible). Outside the main thread (signals are delivered there
    only) the block runs as it is.
    """
    global _HOLDING
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[bool] = []

    def on_int(_signum: int, frame: Any) -> None:
        if held:
            signal.default_int_handler(_signum, frame)
        held.append(True)

    swap = _HOLDING == 0 and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    if swap:
        signal.signal(signal.SIGINT, on_int)
    _HOLDING += 1
    try:
        yield
    finally:
        _HOLDING -= 1
        if swap:
            signal.signal(signal.SIGINT, signal.default_int_handler)
    if held:
        raise KeyboardInterrupt
    if _HOLDING == 0:
        check_termination()
