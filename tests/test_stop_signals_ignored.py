"""A stop signal the process was started ignoring stays ignored inside `on_stop_signals`, so a
run started in the background of a script (SIGINT ignored, as shells do) behaves the same
whenever Ctrl-C arrives; a signal with its default action is taken over and given back."""

from __future__ import annotations

import signal

from pipeline.runtime.execute.stop import on_stop_signals


def test_an_ignored_sigint_stays_ignored_and_sigterm_is_still_heeded() -> None:
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    term_before = signal.getsignal(signal.SIGTERM)
    stops: list[tuple[str, int]] = []
    try:
        with on_stop_signals(lambda name, code: stops.append((name, code))):
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            signal.raise_signal(signal.SIGINT)  # ignored: nothing happens
            signal.raise_signal(signal.SIGTERM)
        assert stops == [("SIGTERM", 143)]
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) is term_before
    finally:
        signal.signal(signal.SIGINT, before)


def test_a_default_sigint_is_taken_over_and_given_back() -> None:
    before = signal.getsignal(signal.SIGINT)
    stops: list[tuple[str, int]] = []
    with on_stop_signals(lambda name, code: stops.append((name, code))):
        signal.raise_signal(signal.SIGINT)
    assert stops == [("SIGINT", 130)]
    assert signal.getsignal(signal.SIGINT) is before
