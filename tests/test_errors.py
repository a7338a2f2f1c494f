"""Signals held while a write must land whole: SIGTERM and Ctrl-C wait for the block's end, then are raised."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

from kdbench import errors
from kdbench.cli import _on_sigterm
from kdbench.errors import Terminated, held_signals


@pytest.fixture(autouse=True)
def python_ctrl_c() -> Iterator[None]:
    """Ctrl-C as Python installs it, whatever this process inherited: a test run started in the background of a
    non-interactive shell (nohup, `&`) inherits SIGINT ignored, and held_signals leaves an ignored SIGINT alone."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)


@pytest.fixture
def sigterm_handler() -> Iterator[None]:
    """The CLI's SIGTERM handler, installed for the test and the termination flag cleared after it."""
    before = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)
        errors._TERMINATION.clear()


def test_sigterm_outside_a_held_block_raises_where_it_lands(sigterm_handler: None) -> None:
    reached = []
    with pytest.raises(Terminated):
        os.kill(os.getpid(), signal.SIGTERM)
        reached.append("after the kill")
    assert reached == []


def test_sigterm_inside_a_held_block_is_raised_when_the_block_ends(sigterm_handler: None) -> None:
    reached = []
    with pytest.raises(Terminated):
        with held_signals():
            os.kill(os.getpid(), signal.SIGTERM)
            reached.append("the second write")
        reached.append("after the block")
    assert reached == ["the second write"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ctrl_c_inside_a_held_block_waits_and_a_second_one_does_not() -> None:
    reached = []
    with pytest.raises(KeyboardInterrupt), held_signals():
        os.kill(os.getpid(), signal.SIGINT)
        reached.append("the second write")
    assert reached == ["the second write"]
    reached.clear()
    with pytest.raises(KeyboardInterrupt), held_signals():
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)  # a write stuck on a lock: the second Ctrl-C interrupts at once
        reached.append("never")
    assert reached == []
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_held_block_that_raises_restores_ctrl_c_and_keeps_sigterm_for_the_next_check(sigterm_handler: None) -> None:
    with pytest.raises(ValueError), held_signals():
        os.kill(os.getpid(), signal.SIGTERM)
        raise ValueError("the write failed")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with pytest.raises(Terminated):
        errors.check_termination()
