"""Secrets never show: every bot token and API key a test sets is registered here (`secret`),
and the session checks that none appears in any log record of the test process (`LogCollector`,
installed by conftest.py for the whole session), in any message or request body the Discord
emulator holds (tests/discord_harness.py), or in the output of the `pintor` processes the tests
start (each such test checks its own output with `leaks`)."""

from __future__ import annotations

import logging
from collections.abc import Iterable

SECRETS: set[str] = set()


def secret(value: str) -> str:
    """Register `value` as a secret (a bot token, an API key); returns it."""
    SECRETS.add(value)
    return value


def leaks(texts: Iterable[str]) -> list[str]:
    """The texts that hold a registered secret (each cut to 200 characters around it)."""
    found = []
    for text in texts:
        for value in SECRETS:
            if value in text:
                at = text.index(value)
                found.append(text[max(0, at - 100):at + len(value) + 100])
    return found


class LogCollector(logging.Handler):
    """Keeps each record's full text (message, arguments, traceback) that holds a secret."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.leaked: list[str] = []
        self.seen = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
        except Exception:  # noqa: BLE001 - a record that cannot be formatted is the logger's fault, not ours
            text = f"{record.msg} {record.args}"
        self.seen += 1
        self.leaked += leaks([text])
