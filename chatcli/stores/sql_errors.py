"""A database driver's errors as chatcli's: each engine's error table (``ErrorTable``, one ``Rule`` a row)
says which ``Fault`` an error is, by what the driver exposes for it: its class, its code (an SQLSTATE, a
server or client error number, an SQLite result code), what the driver was handling when it raised it (a
socket timeout) or the state of the connection (broken). Never by the words of the message: those change
with the server's version and language. ``error_for`` words each fault once, for every engine.

A fault, and what the store does with it::

    LOST             the connection is gone: opened again once and the work run again, then StoreUnavailable
    DEADLOCK         the database rolled the transaction back to break a deadlock: run again as a whole, a
                     few times, then StoreUnavailable
    TIMEOUT          a statement or lock wait outlasted the store's timeout: StoreUnavailable
    CONNECT_TIMEOUT  no answer within the timeout while connecting: StoreUnavailable
    UNREACHABLE      no server answers at the address (refused, unknown host): StoreUnavailable
    BUSY             the database file is locked by another program past the timeout: StoreUnavailable
    NO_PASSWORD      the server wants a password and none was given: asked for at a terminal, else StoreError
    LOGIN            the server refused the user or password (in its words): StoreError
    NO_DATABASE      the server has no such database: StoreError
    DATABASE_DENIED  the database is missing or the user may not open it (the server does not say which)
    NOT_ALLOWED      the user lacks a privilege chatcli needs: StoreError
    NOT_A_DATABASE   the file is not a database chatcli can use (or is damaged): StoreError
    REFUSED          anything else the database refused: StoreError, in the driver's own words

A StoreUnavailable sends a turn to the local spool (``spool.py``) until the database answers again.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from typing import Any, NamedTuple

from chatcli.errors import StoreError, StoreUnavailable


class Fault(Enum):
    """What went wrong, as chatcli acts on it (see the module docstring)."""

    LOST = "lost"
    DEADLOCK = "deadlock"
    TIMEOUT = "timeout"
    CONNECT_TIMEOUT = "connect timeout"
    UNREACHABLE = "unreachable"
    BUSY = "busy"
    NO_PASSWORD = "no password"
    LOGIN = "login"
    NO_DATABASE = "no database"
    DATABASE_DENIED = "database denied"
    NOT_ALLOWED = "not allowed"
    NOT_A_DATABASE = "not a database"
    REFUSED = "refused"


class Rule(NamedTuple):
    """One row of an engine's error table: an error is ``fault`` when it is one of ``types``, its code is
    one of ``codes`` (any code, when empty), it was raised while the driver handled one of ``cause`` (when
    given: the exception's ``__cause__`` or ``__context__``, e.g. a socket timeout), ``test`` holds for it
    (when given: a flag the driver sets on the error), it came from opening a connection (``connecting``
    True) or from an open one (False; None: either), and the connection is closed or broken (``broken``
    True; None: whatever its state). ``name`` says which row it is (in tests and docs)."""

    name: str
    fault: Fault
    types: tuple[type[BaseException], ...] = (Exception,)
    codes: frozenset[object] = frozenset()
    cause: tuple[type[BaseException], ...] = ()
    test: Callable[[Any], bool] | None = None
    connecting: bool | None = None
    broken: bool | None = None

    def matches(self, e: BaseException, code: object, *, connecting: bool, broken: bool) -> bool:
        """Whether error ``e`` (its ``code``), raised ``connecting`` or not on a ``broken`` connection or not,
        is this row's."""
        if not isinstance(e, self.types) or (self.codes and code not in self.codes):
            return False
        if self.connecting is not None and self.connecting != connecting:
            return False
        if self.broken is not None and self.broken != broken:
            return False
        if self.cause and not isinstance(e.__cause__ or e.__context__, self.cause):
            return False
        return self.test is None or bool(self.test(e))


def said(e: BaseException) -> str:
    """A driver error's own words, on one line (PyMySQL's ``(code, message)`` as its message)."""
    args = e.args
    words = args[1] if len(args) == 2 and isinstance(args[0], int) and isinstance(args[1], str) else str(e)
    text = " ".join(words.split()) or type(e).__name__
    return text[:200]


def no_code(e: BaseException) -> object:
    """The code of an error of a driver whose rules go by class alone."""
    return None


def never_broken(conn: Any) -> bool:
    """For a driver whose connections do not say they broke (its errors do)."""
    return False


class ErrorTable(NamedTuple):
    """An engine's errors: ``driver``, the driver's base error classes (what the store catches); ``rules``,
    tried in order (the first that matches gives the fault; none: REFUSED); ``code(e)``, an error's code;
    ``broken(conn)``, whether the driver marked a connection closed or broken."""

    driver: tuple[type[BaseException], ...]
    rules: tuple[Rule, ...]
    code: Callable[[BaseException], object] = no_code
    broken: Callable[[Any], bool] = never_broken

    def fault(self, e: BaseException, conn: Any = None, *, connecting: bool = False) -> Fault:
        """The fault of driver error ``e``, raised on ``conn`` (None: no connection yet) or while
        ``connecting``: its row's, or REFUSED."""
        rule = self.rule_for(e, conn, connecting=connecting)
        return rule.fault if rule is not None else Fault.REFUSED

    def rule_for(self, e: BaseException, conn: Any = None, *, connecting: bool = False) -> Rule | None:
        """The first row that error ``e`` matches (see ``fault``); None when none does."""
        code = self.code(e)
        broken = conn is None or self.broken(conn)
        for rule in self.rules:
            if rule.matches(e, code, connecting=connecting, broken=broken):
                return rule
        return None

    def rule(self, name: str) -> Rule:
        """The row called ``name`` (KeyError when there is none)."""
        for rule in self.rules:
            if rule.name == name:
                return rule
        raise KeyError(name)


class Place(NamedTuple):
    """What the messages of a fault name: the store as shown (``display``, the password as ``***``), its
    ``timeout`` in seconds, the ``database`` and ``user`` its URL names, where its engine takes a password
    from (``password_from``) and how a database is made on it (``create_database``)."""

    display: str
    timeout: float
    database: str = ""
    user: str = ""
    password_from: str = "the URL"
    create_database: str = "CREATE DATABASE"


#: each fault's error and words; ``said`` is the driver's own message, on one line, passwords blanked out
_WORDS: dict[Fault, tuple[type[StoreError], str]] = {
    Fault.LOST: (StoreUnavailable, "the database {display} stopped answering ({said})"),
    Fault.DEADLOCK: (StoreUnavailable, "{display} is too busy: its writers keep deadlocking ({said})"),
    Fault.TIMEOUT: (StoreUnavailable, "{display} did not answer within {timeout:g} s"),
    Fault.CONNECT_TIMEOUT: (
        StoreUnavailable,
        "{display} did not answer within {timeout:g} s; is the server up and the address right?",
    ),
    Fault.UNREACHABLE: (StoreUnavailable, "cannot connect to {display} ({said}); is the server running?"),
    Fault.BUSY: (
        StoreUnavailable,
        "{display} is busy (locked by another program) for more than {timeout:g} s",
    ),
    Fault.NO_PASSWORD: (
        StoreError,
        "{display} refused the login (no password given): give it in {password_from}",
    ),
    Fault.LOGIN: (StoreError, "{display} refused the login ({said}): give the password in {password_from}"),
    Fault.NO_DATABASE: (
        StoreError,
        "{display}: the database{database} does not exist; create it ({create_database}) or fix the URL",
    ),
    Fault.DATABASE_DENIED: (
        StoreError,
        "{display}: the database{database} does not exist or user{user} may not use it; create it or grant access",
    ),
    Fault.NOT_ALLOWED: (
        StoreError,
        "{display}: the user may not do this ({said}); chatcli needs to create and write its tables (chatcli_*)",
    ),
    Fault.NOT_A_DATABASE: (
        StoreError,
        "{display} is not a database chatcli can use ({said}); move the file away or choose another one",
    ),
    Fault.REFUSED: (StoreError, "{display}: {said}"),
}


def error_for(fault: Fault, place: Place, said: str, *, connecting: bool = False) -> StoreError:
    """The error chatcli reports for ``fault`` at ``place``; ``said``: the driver's words (redacted).
    ``connecting``: the fault came from opening a connection."""
    cls, words = _WORDS[fault]
    if fault is Fault.REFUSED and connecting:
        words = "cannot use {display}: {said}"
    return cls(
        words.format(
            display=place.display,
            timeout=place.timeout,
            said=said,
            database=f" {place.database!r}" if place.database else "",
            user=f" {place.user!r}" if place.user else "",
            password_from=place.password_from,
            create_database=place.create_database,
        )
    )


__all__ = ["ErrorTable", "Fault", "Place", "Rule", "error_for", "said"]
