"""Real PostgreSQL and MariaDB servers for chatcli's tests and benchmarks.

Each server owns a folder, listens only on a free 127.0.0.1 port, keeps fsync on, and is stopped and
its folder deleted by close() or at the end of a ``with``::

    with PostgresServer(tmp_path / "pg") as pg:   # or MariaDBServer: mysql:// URLs
        url = pg.new_database()                    # postgresql://chatcli:...@127.0.0.1:PORT/db_1a2b3c4d
        pg.stop("kill"); pg.start()                # same folder, same port: crash recovery

As root, PostgreSQL runs as the ``postgres`` user and MariaDB with ``--user=mysql``; otherwise both run
as the current user. atexit closes servers left open, and a tiny ``sh`` watchdog per server SIGKILLs it
if this process dies without atexit (SIGKILL, segfault). ``python tests/dbservers.py [--only
postgresql|mysql]`` prints ``READY <url of a fresh database>`` per server, serves until Ctrl-C/SIGTERM.
"""

from __future__ import annotations

import abc
import argparse
import atexit
import contextlib
import ctypes
import glob
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

START_TIMEOUT = 30.0  # seconds a server gets to accept connections
STOP_TIMEOUT = 60.0  # seconds a clean shutdown may take before the server is SIGKILLed
DEFAULT_SUPERUSER_PASSWORD = "admin-secret"
DEFAULT_PASSWORD = "chatcli-secret"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")  # the database and user names accepted
_LIVE: set[_Server] = set()  # started and not closed yet: for the atexit fallback
# Reads a line from our pipe: "stop" = all is well; EOF = we died, so SIGKILL the server and its children.
_WATCHDOG = (
    'read -r line; [ "$line" = stop ] && exit 0; kill -s STOP "$1"; '
    'for c in $(cat /proc/"$1"/task/*/children); do kill -s KILL "$c"; done; kill -s KILL "$1"'
)
_PR_SET_CHILD_SUBREAPER, _PR_GET_CHILD_SUBREAPER = 36, 37


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (chosen by the OS)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pg_bindir() -> Path | None:
    """PostgreSQL's bin folder: the newest /usr/lib/postgresql/VERSION/bin, else the one on PATH."""
    installed = glob.glob("/usr/lib/postgresql/*/bin")
    installed.sort(key=lambda d: [int(n) for n in re.findall(r"\d+", d)], reverse=True)
    found = [*installed, os.path.dirname(shutil.which("initdb") or "/nonexistent/initdb")]
    usable = (d for d in found if os.path.isfile(f"{d}/initdb") and os.path.isfile(f"{d}/postgres"))
    return next((Path(d) for d in usable), None)


def _mariadb_binaries() -> tuple[Path, Path] | None:
    """(server, install-db script), or None when either is missing."""

    def find(*names: str) -> Path | None:
        paths = [p for name in names for p in (shutil.which(name), f"/usr/sbin/{name}", f"/usr/bin/{name}")]
        return next((Path(p) for p in paths if p and os.access(p, os.X_OK)), None)

    server, install = find("mariadbd", "mysqld"), find("mariadb-install-db", "mysql_install_db")
    return (server, install) if server and install else None


def missing_servers() -> list[str]:
    """The Debian packages to install for the servers whose binaries are missing; [] when all are there."""
    found = ((PostgresServer, _pg_bindir()), (MariaDBServer, _mariadb_binaries()))
    return [server.package for server, binaries in found if not binaries]


def _kill_tree(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL a server and its children (SIGSTOPped first: no forks meanwhile) and reap them all: as a
    child subreaper meanwhile, we get its orphans, which a container's PID 1 may leave as zombies."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGSTOP)
    kids = []
    for path in glob.glob(f"/proc/{proc.pid}/task/*/children"):
        with contextlib.suppress(OSError):
            kids += [int(pid) for pid in Path(path).read_text().split()]
    libc, was = ctypes.CDLL(None, use_errno=True), ctypes.c_int(0)
    libc.prctl(_PR_GET_CHILD_SUBREAPER, ctypes.byref(was), 0, 0, 0)
    libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    try:
        for pid in (*kids, proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait()
        for pid in kids:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
    finally:
        libc.prctl(_PR_SET_CHILD_SUBREAPER, was.value, 0, 0, 0)


class _Server(abc.ABC):
    """What both servers share: folders, one server process and its watchdog, start/stop/close."""

    kind = package = scheme = system_user = admin_user = admin_db = log_name = ""
    close_mode = "kill"  # how close() stops the server: its data is deleted anyway
    _drop_sql = ""  # DROP DATABASE statement, {name} to fill in

    def __init__(self, base: Path, *, superuser_password: str = DEFAULT_SUPERUSER_PASSWORD) -> None:
        """``base``: a folder (created if missing) that this object owns and deletes in close()."""
        self.base = Path(base).absolute()
        self.host, self.port = "127.0.0.1", 0  # port: picked by the first start(), kept for restarts
        self.superuser_password = superuser_password
        self.data_dir, self.run_dir = self.base / "data", self.base / "run"  # run: unix socket, pid file
        self.log_path = self.base / self.log_name  # server output and the setup tools' output
        self.version = ""  # the server's version string, known after the first start()
        self._root = os.geteuid() == 0
        self._run_as: dict[str, Any] = {}  # Popen arguments that run a child as the server's user (as root)
        self._admin_password = superuser_password  # the one the admin logs in with at the moment
        self._initialized = self._closed = self._owns_base = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._watchdog: subprocess.Popen[bytes] | None = None
        self._passwords: dict[str, str] = {}  # the login users new_database() made

    @abc.abstractmethod
    def _initialize(self) -> None: ...  # fill the data folder
    @abc.abstractmethod
    def _command(self) -> list[str]: ...  # the server's command line
    @abc.abstractmethod
    def _request_stop(self, mode: str) -> None: ...  # ask for a "fast" or "immediate" shutdown
    @abc.abstractmethod
    def _after_first_start(self) -> None: ...  # set passwords, read the version
    @abc.abstractmethod
    def _connect(self, user: str, password: str, dbname: str, timeout: float) -> Any: ...  # TCP, seconds
    @abc.abstractmethod
    def _create(self, name: str, user: str, password: str, new_user: bool) -> None: ...

    @property
    def running(self) -> bool:
        """True while the server process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def admin_url(self) -> str:
        """The superuser's URL (PostgreSQL: database ``postgres``; MariaDB: no database)."""
        return self.url_for(self.admin_db, self.admin_user, self.superuser_password)

    def url_for(self, dbname: str, user: str, password: str) -> str:
        """``SCHEME://USER:PASSWORD@127.0.0.1:PORT/DBNAME``, user and password percent-encoded."""
        login = f"{quote(user, safe='')}:{quote(password, safe='')}"
        return f"{self.scheme}://{login}@{self.host}:{self.port}/{dbname}"

    def start(self) -> None:
        """Start; return once the server accepts TCP connections (START_TIMEOUT seconds at most). The first
        call fills the data folder and picks a free port, later ones (after stop()) reuse both; no-op while
        running. RuntimeError when binaries are missing (naming the Debian package) or when the server
        exits or is not up in time (naming its log, with the last lines)."""
        if self._closed:
            raise RuntimeError(f"{self.kind} server at {self.base} is closed")
        if self.running:
            return
        self._reap()  # the last process may have died on its own
        first = not self._initialized
        if first:
            self._command()  # RuntimeError naming the Debian package when binaries are missing
            self._prepare_folders()
            _LIVE.add(self)
            self._initialize()
            self._initialized = True
        self.port = self.port or free_port()
        self._launch()
        if first:
            self._after_first_start()

    def stop(self, mode: str = "fast") -> None:
        """Stop and wait until the server is gone (SIGKILL after STOP_TIMEOUT seconds). ``mode``: "fast" =
        clean shutdown; "immediate" = PostgreSQL's ``pg_ctl stop -m immediate``, MariaDB's shutdown with
        innodb_fast_shutdown=2: no checkpoint, the next start runs crash recovery; "kill" = SIGKILL the
        server and its child processes, a crash. No-op when not running; ValueError on another mode."""
        if mode not in ("fast", "immediate", "kill"):
            raise ValueError(f"stop mode must be 'fast', 'immediate' or 'kill', not {mode!r}")
        if self._proc is not None and self.running:
            with contextlib.suppress(Exception):  # no answer, or too slow: kill it below
                if mode != "kill":
                    self._request_stop(mode)
                    self._proc.wait(STOP_TIMEOUT)
            if self._proc.poll() is None:
                _kill_tree(self._proc)
        self._reap()

    def new_database(
        self, name: str | None = None, *, user: str = "chatcli", password: str = DEFAULT_PASSWORD
    ) -> str:
        """Create a database (a unique name when ``name`` is None) that the login ``user`` owns or has all
        rights on, creating that user with ``password`` on first use; return the database's URL.
        ValueError on a bad name, or when ``user`` was created here with another password."""
        name = name or f"db_{secrets.token_hex(4)}"
        for word in (name, user):
            if not _NAME.fullmatch(word):
                raise ValueError(f"{word!r}: use letters, digits and '_' (at most 63, not a digit first)")
        if user == self.admin_user or self._passwords.get(user, password) != password:
            raise ValueError(f"user {user!r} already exists on this server with another password")
        self._create(name, user, password, user not in self._passwords)
        self._passwords[user] = password
        return self.url_for(name, user, password)

    def drop_database(self, name: str) -> None:
        """Drop a database (PostgreSQL: closing its connections); no error if it does not exist."""
        if not _NAME.fullmatch(name):
            raise ValueError(f"bad database name {name!r}")
        self._sql((self._drop_sql.format(name=name), ()))

    def close(self) -> None:
        """Stop the server (``close_mode``, no clean shutdown) and delete ``base`` if start() made or found
        it empty. Idempotent."""
        if self._closed:
            return
        self._closed = True
        _LIVE.discard(self)
        try:
            self.stop(self.close_mode)  # kills the server if the requested shutdown fails
        finally:
            if self._owns_base:
                shutil.rmtree(self.base, ignore_errors=True)
            if self.run_dir.parent != self.base:
                shutil.rmtree(self.run_dir, ignore_errors=True)

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _sql(self, *statements: tuple[str, tuple[Any, ...]]) -> Any:
        """Run (query, params) statements on a new autocommit superuser connection (both drivers bind
        parameters client-side, so they work in any statement); return the last one's first row."""
        if not self.running:
            raise RuntimeError(f"{self.kind} server is not running")
        conn = self._connect(self.admin_user, self._admin_password, self.admin_db, STOP_TIMEOUT)
        with conn, conn.cursor() as cur:
            for query, params in statements:
                cur.execute(query, params)
            return cur.fetchone() if cur.description else None

    def _failure(self, what: str) -> RuntimeError:
        """An error saying what went wrong, naming the log file and quoting its last lines."""
        try:
            tail = self.log_path.read_text(errors="replace").splitlines()[-15:]
        except OSError:
            tail = []
        return RuntimeError(f"{what}; see {self.log_path}:\n" + "\n".join("    " + line for line in tail))

    def _prepare_folders(self) -> None:
        """Create base, data, run and tmp folders. As root, give them to the server's user, and give o+x to
        ``base``, the run folder and their ancestors where they lack it (only to folders we own)."""
        self.base.mkdir(parents=True, exist_ok=True)
        if any(self.base.iterdir()):  # close() deletes base: never take a folder holding anything
            raise RuntimeError(f"{self.base} is not empty: give {self.kind} a new or empty folder")
        self._owns_base = True
        if len(str(self.run_dir)) > 80:  # unix socket paths are limited to 107 bytes
            self.run_dir = Path(tempfile.mkdtemp(prefix="dbs-"))
        for folder in (self.data_dir, self.run_dir, self.base / "tmp"):
            folder.mkdir(exist_ok=True)
        self.log_path.touch()
        if not self._root:
            return
        try:
            account = pwd.getpwnam(self.system_user)
        except KeyError:
            raise RuntimeError(f"no system user {self.system_user}: apt-get install {self.package}") from None
        self._run_as = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
        for folder in (self.base, *self.base.parents, self.run_dir, *self.run_dir.parents):
            info = folder.stat()
            if not info.st_mode & stat.S_IXOTH:
                if info.st_uid != os.geteuid():
                    raise RuntimeError(f"{folder} is not searchable by {self.system_user}: use another base")
                folder.chmod(stat.S_IMODE(info.st_mode) | stat.S_IXOTH)
        for path in (self.data_dir, self.run_dir, self.base / "tmp", self.log_path):
            os.chown(path, self._run_as["user"], self._run_as["group"])
        self.data_dir.chmod(0o700)

    def _env(self) -> dict[str, str]:
        """Our environment without PG*/MYSQL*/LC_* variables, in the C.UTF-8 locale."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "MYSQL", "MARIADB", "LC_"))}
        return env | {"LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}

    def _run_tool(self, what: str, cmd: list[str], **popen: Any) -> None:
        """Run a setup tool, its output appended to the log; RuntimeError with the log's tail if it fails."""
        with open(self.log_path, "ab") as log:
            done = subprocess.run(
                cmd,
                check=False,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=self.base,
                env=self._env(),
                timeout=120,
                **popen,
            )
        if done.returncode != 0:
            raise self._failure(f"{what} failed with exit status {done.returncode}")

    def _launch(self) -> None:
        """Spawn the server and its watchdog; wait until the server answers (else RuntimeError)."""
        with open(self.log_path, "ab") as log:
            self._proc = proc = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=self.base,
                env=self._env(),
                start_new_session=True,
                **self._run_as,
            )
        self._watchdog = subprocess.Popen(
            ["sh", "-c", _WATCHDOG, "dbservers-watchdog", str(proc.pid)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline, error = time.monotonic() + START_TIMEOUT, "none"
        while proc.poll() is None:
            try:
                self._connect(self.admin_user, self._admin_password, self.admin_db, 2).close()
                return
            except Exception as exc:
                error = " ".join(str(exc).split())
            if time.monotonic() > deadline:
                _kill_tree(proc)
                self._reap()
                raise self._failure(
                    f"{self.kind} did not accept connections on {self.host}:{self.port} "
                    f"within {START_TIMEOUT:.0f} s (last error: {error})"
                )
            time.sleep(0.02)
        self._reap()
        raise self._failure(f"{self.kind} exited with status {proc.returncode} while starting")

    def _reap(self) -> None:
        """Forget a dead server process and dismiss its watchdog."""
        if self.running:
            return
        self._proc = None
        if self._watchdog is not None:
            with contextlib.suppress(OSError, ValueError, subprocess.TimeoutExpired):
                self._watchdog.communicate(b"stop\n", timeout=5)
            self._watchdog = None


class PostgresServer(_Server):
    """A PostgreSQL cluster: scram-sha-256 for every TCP login, trust on its own unix socket, fsync on,
    UTF8 in the C.UTF-8 locale (so full-text search defaults to 'english')."""

    kind, package, scheme, system_user = "PostgreSQL", "postgresql-15", "postgresql", "postgres"
    admin_user, admin_db, log_name, close_mode = "postgres", "postgres", "postgresql.log", "immediate"
    _drop_sql = 'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'

    def _bindir(self) -> Path:
        if (bindir := _pg_bindir()) is None:
            raise RuntimeError(f"PostgreSQL (initdb, postgres) not found: apt-get install {self.package}")
        return bindir

    def _initialize(self) -> None:
        initdb, pwfile = self._bindir() / "initdb", self.base / "tmp" / "superuser-password"
        with os.fdopen(os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as out:
            out.write(self.superuser_password + "\n")
        if self._run_as:
            os.chown(pwfile, self._run_as["user"], self._run_as["group"])
        try:  # --no-sync only skips syncing the new cluster once; the server itself runs with fsync on
            self._run_tool(
                "initdb",
                [
                    str(initdb),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    self.admin_user,
                    f"--pwfile={pwfile}",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    "--encoding=UTF8",
                    "--locale=C.UTF-8",
                    "--no-sync",
                    "--no-instructions",
                ],
                **self._run_as,
            )
        finally:
            pwfile.unlink(missing_ok=True)
        socket_dir = str(self.run_dir).replace("'", "''")
        with open(self.data_dir / "postgresql.conf", "a") as conf:
            conf.write(
                f"\n# tests/dbservers.py\nlisten_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{socket_dir}'\nfsync = on\nsynchronous_commit = on\n"
                "max_connections = 200\n"  # a team of 64 chatcli (tests/teamload.py) and its readers, twice over
            )
        hba = "local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n"  # no other logins
        (self.data_dir / "pg_hba.conf").write_text(hba)

    def _command(self) -> list[str]:
        return [str(self._bindir() / "postgres"), "-D", str(self.data_dir), "-p", str(self.port)]

    def _request_stop(self, mode: str) -> None:  # the signals that pg_ctl stop -m fast / -m immediate send
        assert self._proc is not None
        self._proc.send_signal(signal.SIGINT if mode == "fast" else signal.SIGQUIT)

    def _after_first_start(self) -> None:
        self.version = str(self._sql(("SHOW server_version", ()))[0]).split()[0]

    def _connect(self, user: str, password: str, dbname: str, timeout: float) -> Any:
        import psycopg  # imported here: `import dbservers` needs neither driver

        return psycopg.connect(
            host=self.host,
            port=self.port,
            user=user,
            password=password,
            dbname=dbname,
            autocommit=True,
            connect_timeout=max(2, round(timeout)),
            cursor_factory=psycopg.ClientCursor,
        )

    def _create(self, name: str, user: str, password: str, new_user: bool) -> None:
        if new_user:
            exists = self._sql(("SELECT count(*) FROM pg_roles WHERE rolname = %s", (user,)))[0]
            self._sql((f'{"ALTER" if exists else "CREATE"} ROLE "{user}" LOGIN PASSWORD %s', (password,)))
        self._sql((f'CREATE DATABASE "{name}" OWNER "{user}"', ()))


class MariaDBServer(_Server):
    """A MariaDB server run with --no-defaults: compiled-in defaults (full-text search: min token size 3,
    built-in stopwords; character set latin1) except a small InnoDB. Logins use mysql_native_password."""

    kind, package, scheme, system_user = "MariaDB", "mariadb-server", "mysql", "mysql"
    admin_user, log_name = "root", "mariadb.log"
    _drop_sql = "DROP DATABASE IF EXISTS `{name}`"

    def _binaries(self) -> tuple[Path, Path]:
        if (found := _mariadb_binaries()) is None:
            raise RuntimeError(
                f"MariaDB (mariadbd, mariadb-install-db) not found: apt-get install {self.package}"
            )
        return found

    def _options(self) -> list[str]:
        """Options for mariadb-install-db (which passes them on) and mariadbd alike."""
        return [
            "--no-defaults",
            f"--datadir={self.data_dir}",
            f"--tmpdir={self.base / 'tmp'}",
            "--skip-name-resolve",
            *([f"--user={self.system_user}"] if self._root else []),
            "--innodb-buffer-pool-size=64M",
            "--innodb-log-file-size=16M",
            "--max-connections=200",  # a team of 64 chatcli (tests/teamload.py) and its readers, twice over
        ]

    def _initialize(self) -> None:
        self._run_tool(
            "mariadb-install-db",
            [
                str(self._binaries()[1]),
                *self._options(),
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ],
        )
        self._admin_password = ""  # the "normal" root accounts have no password until _after_first_start

    def _command(self) -> list[str]:
        return [
            str(self._binaries()[0]),
            *self._options(),
            f"--port={self.port}",
            "--bind-address=127.0.0.1",
            f"--socket={self.run_dir / 'mysqld.sock'}",
            f"--pid-file={self.run_dir / 'mariadbd.pid'}",
            f"--log-error={self.log_path}",
        ]

    def _request_stop(self, mode: str) -> None:
        if mode == "immediate":  # shut down without flushing InnoDB pages: the next start runs recovery
            self._sql(("SET GLOBAL innodb_fast_shutdown = 2", ()))
        assert self._proc is not None
        self._proc.send_signal(signal.SIGTERM)

    def _after_first_start(self) -> None:
        # install-db also makes root@HOSTNAME, which --skip-name-resolve leaves unusable (ALTER USER fails)
        self._sql(
            *(
                ("ALTER USER root@%s IDENTIFIED BY %s", (host, self.superuser_password))
                for host in ("localhost", "127.0.0.1", "::1")
            )
        )
        self._admin_password = self.superuser_password
        self.version = str(self._sql(("SELECT VERSION()", ()))[0])

    def _connect(self, user: str, password: str, dbname: str, timeout: float) -> Any:
        import pymysql  # type: ignore[import-untyped]

        return pymysql.connect(
            host=self.host,
            port=self.port,
            user=user,
            password=password,
            database=dbname or None,
            autocommit=True,
            connect_timeout=timeout,
            read_timeout=timeout,
            write_timeout=timeout,
        )

    def _create(self, name: str, user: str, password: str, new_user: bool) -> None:
        hosts = ("%", "localhost")
        logins = [
            (query, (user, host, password))
            for host in hosts
            if new_user
            for query in (
                "CREATE USER IF NOT EXISTS %s@%s IDENTIFIED BY %s",
                "ALTER USER %s@%s IDENTIFIED BY %s",
            )
        ]
        self._sql(
            *logins,
            (f"CREATE DATABASE `{name}`", ()),
            *((f"GRANT ALL PRIVILEGES ON `{name}`.* TO %s@%s", (user, host)) for host in hosts),
        )


@atexit.register
def _close_all() -> None:
    """The atexit fallback: close every server this process still has open."""
    for server in list(_LIVE):
        server.close()


def main(argv: list[str] | None = None) -> int:
    """Start the servers, print ``READY <url>`` for a fresh database on each, serve until Ctrl-C or
    SIGTERM, clean up. Exit status 0, or 1 (an ``ERROR`` line on stderr) if a server does not start."""
    parser = argparse.ArgumentParser(description="Throwaway PostgreSQL and MariaDB servers on 127.0.0.1.")
    parser.add_argument("--only", choices=("postgresql", "mysql"), help="start only this server")
    parser.add_argument(
        "--missing",
        action="store_true",
        help="print the Debian packages the servers need that are not installed, and exit",
    )
    args = parser.parse_args(argv)
    if args.missing:
        print(" ".join(missing_servers()))
        return 0
    base = Path(tempfile.mkdtemp(prefix="chatcli-dbservers-"))
    servers = [
        cls(base / kind)
        for kind, cls in (("postgresql", PostgresServer), ("mysql", MariaDBServer))
        if args.only in (None, kind)
    ]
    for signum in (signal.SIGINT, signal.SIGTERM):  # both raise KeyboardInterrupt, even if SIGINT was ignored
        signal.signal(signum, signal.default_int_handler)
    try:
        for server in servers:
            server.start()
            print(f"READY {server.new_database()}", flush=True)
            print(
                f"{server.kind} {server.version}: admin {server.admin_url}, log {server.log_path}",
                file=sys.stderr,
                flush=True,
            )
        while True:
            signal.pause()
    except KeyboardInterrupt:
        return 0
    except RuntimeError as exc:
        print(f"ERROR {exc}", file=sys.stderr)
        return 1
    finally:
        for server in servers:
            server.close()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
