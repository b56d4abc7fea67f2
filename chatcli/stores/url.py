"""A store's name parsed once into a value: ``StoreURL``.

A store is named by a folder path (``./sessions``, ``~/chats``) or a URL::

    sqlite:////abs/path/chats.db   sqlite://relative/chats.db    sqlite://~/chats.db
    postgresql://user[:password]@host[:port][,host2[:port2]]/db[?libpq options]   (also postgres://)
    mysql://user[:password]@host[:port]/db[?unix_socket=PATH&ssl_ca=FILE...]      (also mariadb://)

Everything a caller needs is derived from the one parsed value: how it is shown (``display``: the password
as ``***``), what a command line may repeat (``address``: no password at all), the local spool's key
(``identity``: the database, however the URL is spelled), the driver's connection arguments
(``libpq_params``, ``pymysql_params``) and the ``secrets`` that ``redact`` blanks out of any text (a
driver's error message, say). Nothing else in chatcli parses or rebuilds a store URL.

``sqlite:///X`` is read as ``/X`` by chatcli 0.1 and as ``./X`` by SQLAlchemy and most Python tools:
it is taken in the one reading whose file exists, and refused (with both spellings that say which) when
neither or both do. ``display`` and ``address`` always write the unambiguous form.

A password is found however it is spelled: URL-encoded or not (``#``, ``?``, ``/``, ``@``, spaces and a bad
``%`` escape are taken as part of it: the user part ends at the last ``@``), or as libpq's ``?password=``.
Parsing raises ConfigError (a usage error) for a URL that can never work, and its message never holds
the password.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit, urlunsplit

from chatcli.errors import ConfigError
from chatcli.paths import expanded

#: URL schemes and the engine each names
SCHEMES = {
    "sqlite": "sqlite",
    "postgresql": "postgresql",
    "postgres": "postgresql",
    "mysql": "mysql",
    "mariadb": "mysql",
}
DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306}
#: query options whose value is a secret (shown as ***, never in ``address``)
SECRET_OPTIONS = frozenset({"password", "sslpassword"})
#: query options of a PostgreSQL URL that choose the server or the database (the rest are connection
#: settings: they do not change which database the spool belongs to)
_PG_IDENTITY = ("host", "hostaddr", "port", "dbname", "service")
#: what a MySQL URL may say beyond host, port, user, password and database (PyMySQL's own names)
MYSQL_OPTIONS = ("unix_socket", "ssl_ca", "ssl_cert", "ssl_key", "ssl_verify_cert", "ssl_verify_identity")
_MYSQL_FLAGS = frozenset({"ssl_verify_cert", "ssl_verify_identity"})
_LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1", "localhost.localdomain", "ip6-localhost"})
#: a password shorter than this is not blanked out of other text (it would garble every message)
MIN_REDACTED = 3
_EXAMPLES = "use a folder path, sqlite://FILE, postgresql://user@host/db or mysql://user@host/db"


@dataclass(frozen=True)
class Host:
    """One server of a URL: ``name`` (a host name, an IP address without brackets, or a socket folder) and
    ``port`` (None: the engine's default)."""

    name: str
    port: int | None = None

    def shown(self) -> str:
        """The host as a URL writes it: ``[::1]:5432``, ``db.lan``, ``%2Frun%2Fpostgresql``."""
        if ":" in self.name:
            name = f"[{self.name}]"
        else:
            name = quote(self.name, safe="") if any(c in self.name for c in "/@?#%,") else self.name
        return name if self.port is None else f"{name}:{self.port}"


@dataclass(frozen=True)
class StoreURL:
    """A parsed store name. ``kind``: ``folder``, ``sqlite``, ``postgresql`` or ``mysql``; ``path``: the
    folder or the SQLite file (``~`` expanded); for a database server: ``scheme`` as typed (``postgres``,
    ``mariadb``...), ``user``, ``password`` (None: not in the URL; never shown), ``hosts``, ``database``
    and the query ``options`` (``password`` apart; the others of SECRET_OPTIONS are shown as ``***``).
    ``secrets`` are the passwords as typed and as meant, for ``redact``."""

    kind: str
    path: Path | None = None
    scheme: str = ""
    user: str = ""
    password: str | None = field(default=None, repr=False)
    hosts: tuple[Host, ...] = ()
    database: str = ""
    options: tuple[tuple[str, str], ...] = field(default=(), repr=False)  # (sslpassword may be one)
    secrets: frozenset[str] = field(default=frozenset(), repr=False)
    #: the spool folder's name an older chatcli gave this spelling of the URL (see spool.adopt_legacy_spool)
    legacy_spool: str | None = field(default=None, repr=False, compare=False)

    # -- what callers derive ---------------------------------------------------------------------------
    @property
    def is_database(self) -> bool:
        """Whether the store is a database (sqlite, postgresql, mysql) rather than the folder."""
        return self.kind != "folder"

    @property
    def display(self) -> str:
        """How messages show the store: the path, or the URL with ``***`` for the password."""
        return self._text(masked=True)

    @property
    def address(self) -> str:
        """The store with no password in it at all, for a command line to copy (chatcli finds the password
        again where it found it the first time: the environment, ``~/.pgpass``, a prompt)."""
        return self._text(masked=False)

    @property
    def identity(self) -> str:
        """What names the database this store is, whatever the spelling: the engine, the servers (a
        loopback name or address, or a local socket, is ``localhost``; the default port filled in) and
        the database; for SQLite and the folder, the absolute file or folder. Two URLs with one key are
        one database (``postgres://`` and ``postgresql://``, ``127.0.0.1`` and ``localhost``, with or
        without ``?connect_timeout=5``)."""
        if self.path is not None:
            return f"{self.kind}:{os.path.abspath(self.path)}"
        opts = dict(self.options)
        if self.kind == "postgresql":
            names = opts.get("host", ",".join(h.name for h in self.hosts)).split(",")
            ports = opts.get("port", ",".join(str(h.port or "") for h in self.hosts)).split(",")
            database = opts.get("dbname", self.database)
            extra = [f"{k}={opts[k]}" for k in ("hostaddr", "service") if k in opts]
        else:
            names = ["localhost" if "unix_socket" in opts else (self.hosts[0].name if self.hosts else "")]
            ports = [str(self.hosts[0].port or "") if self.hosts else ""]
            database, extra = self.database, []
        default = DEFAULT_PORTS[self.kind]
        servers = []
        for n, name in enumerate(names):
            port = ports[n] if n < len(ports) else (ports[-1] if ports else "")
            servers.append(f"{_server_name(name)}:{port or default}")
        return f"{self.kind}://{','.join(sorted(servers))}/{database}" + "".join(f";{e}" for e in extra)

    def libpq_params(self) -> dict[str, Any]:
        """The connection keywords for libpq (``psycopg.connect(**params)``): ``host``, ``port``,
        ``user``, ``password``, ``dbname`` when the URL has them, then every query option as it is
        (libpq refuses one it does not know)."""
        params: dict[str, Any] = {}
        if self.hosts:
            params["host"] = ",".join(h.name for h in self.hosts)
            if any(h.port is not None for h in self.hosts):
                params["port"] = ",".join(str(h.port or "") for h in self.hosts)
        if self.user:
            params["user"] = self.user
        if self.password is not None:
            params["password"] = self.password
        if self.database:
            params["dbname"] = self.database
        params.update(self.options)
        return params

    def pymysql_params(self) -> dict[str, Any]:
        """The keyword arguments of ``pymysql.connect`` for this URL (without the password, which the
        store may find elsewhere: ``MYSQL_PWD``, a prompt): ``host``, ``port``, ``user`` (the login name
        when the URL has none), ``database`` and the options of ``MYSQL_OPTIONS``."""
        host = self.hosts[0] if self.hosts else Host("localhost")
        params: dict[str, Any] = {
            "host": host.name,
            "port": host.port or DEFAULT_PORTS["mysql"],
            "user": self.user or os.environ.get("USER", ""),
            "database": self.database,
        }
        for key, value in self.options:
            params[key] = _flag(key, value) if key in _MYSQL_FLAGS else value
        return params

    def _text(self, *, masked: bool) -> str:
        if self.kind == "sqlite" and self.path is not None:
            return _sqlite_url(self.path)
        if self.path is not None:  # the folder, as FolderStore shows it: ./sessions for a relative one
            text = str(self.path)
            return f".{os.sep}{text}" if not self.path.is_absolute() and not text.startswith(".") else text
        user = quote(self.user, safe="")
        opts = [(k, "***") for k, _ in self.options if k in SECRET_OPTIONS] if masked else []
        opts = [(k, v) for k, v in self.options if k not in SECRET_OPTIONS] + opts
        if self.password is not None and masked:
            if user:
                user += ":***"
            else:
                opts.append(("password", "***"))
        text = f"{self.scheme}://{user + '@' if user else ''}{','.join(h.shown() for h in self.hosts)}"
        text += f"/{quote(self.database, safe='')}"
        if opts:
            text += "?" + "&".join(f"{quote(k, safe='')}={quote(v, safe='/*')}" for k, v in opts)
        return text


def parse_store(name: str | Path) -> StoreURL:
    """The StoreURL for a folder path or a store URL. Raises ConfigError (the message never holds a
    password) for an unknown scheme, a URL that names no host or database, a port that is not a number
    from 1 to 65535, a bad IPv6 address, or options the engine does not take."""
    text = str(name).strip()
    if not text:
        raise ConfigError("the store is empty: give a folder path or a URL such as sqlite://chats.db")
    if "://" not in text:
        return StoreURL("folder", path=expanded(text))
    scheme, rest = text.split("://", 1)
    kind = SCHEMES.get(scheme.lower())
    if kind is None:
        shown = scheme if scheme.isascii() and scheme.isprintable() and len(scheme) <= 20 else "?"
        raise ConfigError(f"unknown store {shown + '://'!r}: {_EXAMPLES}")
    url = _sqlite(text, rest) if kind == "sqlite" else _server(scheme.lower(), kind, rest)
    return replace(url, legacy_spool=_legacy_spool(text, url))


def _sqlite(text: str, rest: str) -> StoreURL:
    path, _, query = rest.partition("?")
    if query:
        raise ConfigError(
            f"{text!r}: an SQLite store takes no options (?{query}); a '?' in a file name is written %3F"
        )
    path = unquote(path)
    if not path or path.endswith("/") or "\x00" in path:
        raise ConfigError(
            f"{text!r} names no database file: use sqlite://path/to/chats.db or sqlite:////abs/path/chats.db"
        )
    if path.startswith("//"):  # sqlite:////abs/chats.db: absolute however many slashes lead
        path = "/" + path.lstrip("/")
    elif path.startswith("/"):
        path = _one_reading(text, path)
    return StoreURL("sqlite", path=expanded(path))


def _one_reading(text: str, path: str) -> str:
    """The path that ``sqlite:///X`` (``path`` is ``/X``) names: ``/X`` when only that file exists, ``X``
    (relative) when only that one does. ConfigError when neither or both exist, spelling out both
    unambiguous URLs."""
    readings = (path, path[1:])
    found = [p for p in readings if os.path.exists(expanded(p))]
    if len(found) == 1:
        return found[0]
    absolute, relative = (expanded(p) for p in readings)
    shown = str(relative) if relative.is_absolute() else f".{os.sep}{relative}"
    state = "both exist" if found else "neither exists yet"
    raise ConfigError(
        f"{text!r} could name {absolute} or {shown}, and {state}: write {_sqlite_url(absolute)} for "
        f"{absolute} or {_sqlite_url(relative)} for {shown}"
    )


def _sqlite_url(path: Path) -> str:
    """The one URL that names the SQLite file ``path`` whichever way a tool reads ``sqlite:///``:
    ``sqlite:////abs/chats.db`` for an absolute path, ``sqlite://chats.db`` for a relative one (``%`` and
    ``?`` in a name are written ``%25`` and ``%3F``, so the URL reads back as the same path)."""
    name = str(path).replace("%", "%25").replace("?", "%3F")
    return f"sqlite:///{name}" if path.is_absolute() else f"sqlite://{name}"


def _server(scheme: str, kind: str, rest: str) -> StoreURL:
    userinfo, at, location = rest.rpartition("@")
    secrets: set[str] = set()
    user = password = None
    if at:
        raw_user, colon, raw_password = userinfo.partition(":")
        user = _decoded(raw_user)
        if colon:
            password = _decoded(raw_password)
            secrets.update({raw_password, password, quote(password, safe=""), quote(password)})
    netloc, path, query = _split_location(location)
    shown = f"{scheme}://{quote(user or '', safe='') + (':***' if password is not None else '') + '@' if at else ''}"
    shown += location.split("?", 1)[0]
    options: list[tuple[str, str]] = []
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key in SECRET_OPTIONS:
            secrets.update({value, quote(value, safe="")})
        if key == "password":
            password = value
        else:
            options.append((key, value))
    if "#" in location:
        raise ConfigError(f"{shown!r}: a store URL has no '#' part; write a '#' in a name as %23")
    hosts = tuple(_hosts(netloc, kind, shown))
    database = unquote(path.lstrip("/"))
    url = StoreURL(
        kind,
        scheme=scheme,
        user=user or "",
        password=password,
        hosts=hosts,
        database=database,
        options=tuple(options),
        secrets=frozenset(s for s in secrets if len(s) >= MIN_REDACTED),
    )
    _KNOWN.update(url.secrets)
    shown = url.display
    keys = [k for k, _ in options]
    if not hosts and "host" not in keys:
        raise ConfigError(f"{shown!r} names no host: use {scheme}://user@host/database")
    if not database and "dbname" not in keys:
        raise ConfigError(f"{shown!r} names no database: use {scheme}://user@host/database")
    if kind == "mysql":
        _check_mysql(url, shown)
    return url


def _split_location(location: str) -> tuple[str, str, str]:
    """``host:port/db?query`` -> (``host:port``, ``/db``, ``query``)."""
    before, _, query = location.partition("?")
    netloc, slash, path = before.partition("/")
    return netloc, slash + path, query


def _hosts(netloc: str, kind: str, shown: str) -> Iterable[Host]:
    if not netloc:
        return
    entries = netloc.split(",")
    if len(entries) > 1 and kind != "postgresql":
        raise ConfigError(f"{shown!r}: a MySQL store names one host")
    for entry in entries:
        if entry.startswith("["):
            import ipaddress

            address, bracket, tail = entry[1:].partition("]")
            try:
                ipaddress.IPv6Address(address.split("%", 1)[0])
            except ValueError:
                raise ConfigError(
                    f"{shown!r}: [{address}] is not an IPv6 address (e.g. [::1] or [2001:db8::5])"
                ) from None
            if not bracket or (tail and not tail.startswith(":")):
                raise ConfigError(f"{shown!r}: an IPv6 address is written [address] or [address]:port")
            name, port = address, tail[1:] if tail else None
        else:
            name, colon, port_text = entry.partition(":")
            port = port_text if colon else None
            if ":" in port_text:
                raise ConfigError(
                    f"{shown!r}: an IPv6 address is written in brackets, e.g. {kind}://user@[::1]:{DEFAULT_PORTS[kind]}/db"
                )
        yield Host(unquote(name), _port(port, shown))


def _port(text: str | None, shown: str) -> int | None:
    if text is None or text == "":
        return None
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= 65535:
        raise ConfigError(f"{shown!r}: the port must be a number from 1 to 65535")
    return int(text)


def _check_mysql(url: StoreURL, shown: str) -> None:
    for key, value in url.options:
        if key not in MYSQL_OPTIONS:
            raise ConfigError(
                f"{shown!r}: a MySQL store does not take the option {key!r} (it takes "
                f"{', '.join(MYSQL_OPTIONS)})"
            )
        if key in _MYSQL_FLAGS:
            _flag(key, value)
    if "/" in url.database:
        raise ConfigError(f"{shown!r}: name the database after the host, e.g. mysql://user@host/chats")


def _flag(key: str, value: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"the store option {key} is true or false, not {value!r}")


def _decoded(text: str) -> str:
    """Percent-decoded ``text``; taken as it is when it holds a ``%`` that is no valid escape (a
    password typed without encoding)."""
    if "%" not in text:
        return text
    chunks = text.split("%")[1:]
    if any(len(c) < 2 or not all(ch in "0123456789abcdefABCDEF" for ch in c[:2]) for c in chunks):
        return text
    try:
        return unquote(text, errors="strict")
    except UnicodeDecodeError:
        return text


def _legacy_spool(text: str, url: StoreURL) -> str | None:
    """The spool folder's name chatcli 0.1 gave this URL: its scheme as typed and a hash of the URL as typed
    with any password left out (None when that chatcli could not have read the URL)."""
    if url.kind == "sqlite":
        identity = f"sqlite://{url.path}"
    else:
        try:
            parts = urlsplit(text)
            if parts.password is None:
                identity = text
            else:
                host = parts.hostname or ""
                host = f"[{host}]" if ":" in host else host
                host += f":{parts.port}" if parts.port is not None else ""
                user = quote(parts.username or "", safe="")
                identity = urlunsplit(
                    (parts.scheme, f"{user}@{host}", parts.path, parts.query, parts.fragment)
                )
        except ValueError:
            return None
    digest = hashlib.sha256(identity.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{identity.split('://', 1)[0]}-{digest}"


def _server_name(name: str) -> str:
    n = name.strip().lower().rstrip(".")
    if not n or n.startswith("/") or n in _LOOPBACK or n.startswith("127."):
        return "localhost"
    return n


#: every password a store URL held in this process: ``redact_known`` blanks them out of any message
_KNOWN: set[str] = set()


def redact_known(text: str) -> str:
    """``text`` without any password of a store URL parsed in this process (a last safeguard for
    messages that did not come through a store: an unexpected error, say)."""
    return redact(text, _KNOWN) if _KNOWN else text


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with each of ``secrets`` (longest first) replaced by ``***``."""
    for secret in sorted(secrets, key=len, reverse=True):
        if secret and secret in text:
            text = text.replace(secret, "***")
    return text


__all__ = ["DEFAULT_PORTS", "SCHEMES", "Host", "StoreURL", "parse_store", "redact", "redact_known"]
