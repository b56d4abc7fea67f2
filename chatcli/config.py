"""Settings: command-line flags > environment > TOML config file > defaults.

Environment: ``CHATCLI_STORE`` (where sessions
are kept: a folder or a database URL; ``CHATCLI_SESSIONS_DIR`` is the older name), ``CHATCLI_BACKEND``,
``CHATCLI_MODEL``, ``CHATCLI_CONFIG`` (the config file's path), ``CHATCLI_STATE_DIR`` (input history, model
server log), ``NO_COLOR``; the backends read their own (``OPENAI_API_KEY``, ``OPENAI_BASE_URL``,
``OLLAMA_HOST``: ``chatcli.backends``). The config file (default: the platform's user config
folder, e.g. ``~/.config/chatcli/config.toml``) takes the keys in ``FILE_KEYS``.

An API key is read here and handed to the backend; it is never written to a session file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from chatcli.errors import ConfigError
from chatcli.paths import expanded

#: keys the config file may hold, with their types
FILE_KEYS: dict[str, type | tuple[type, ...]] = {
    "backend": str,
    "model": str,
    "base_url": str,
    "system": str,
    "temperature": (int, float),
    "top_p": (int, float),
    "repeat_penalty": (int, float),
    "max_tokens": int,
    "timeout": (int, float),
    "connect_timeout": (int, float),
    "idle_timeout": (int, float),
    "store": str,
    "sessions_dir": str,
    "store_timeout": (int, float),
    "model_path": str,
    "n_ctx": int,
    "context_window": int,
    "compact_at": (int, float),
    "compact_keep": int,
    "threads": int,
    "keep_alive": str,
    "think": bool,
    "show_reasoning": bool,
    "tools": (str, list),
    "approve": list,
    "tool_timeout": (int, float),
    "max_tool_rounds": int,
    "mcp": dict,
}
DEFAULT_STORE = "sessions"
COMPACT_KEEP = 2  # turns /compact keeps whole by default: the newest two exchanges stay word for word
MAX_WINDOW = 100_000_000  # tokens: far above any model's context window, and a number every file can hold


@dataclass
class Settings:
    """Everything a command needs to open a session. Times are in seconds, sizes in tokens."""

    backend: str = "local"
    model: str = ""  # "" = the backend's default
    base_url: str = ""  # "" = the backend's default
    api_key: str | None = field(default=None, repr=False)
    system: str = ""
    title: str = ""
    temperature: float | None = None
    top_p: float | None = None
    repeat_penalty: float | None = None
    max_tokens: int | None = None
    timeout: float = 600.0  # whole turn
    connect_timeout: float = 10.0
    idle_timeout: float = 120.0  # the longest the model may send nothing
    store: str = DEFAULT_STORE  # a folder path or a store URL (see chatcli.stores); may hold a password
    store_timeout: float = 10.0  # seconds a database statement or connection attempt may take
    model_path: Path | None = None
    n_ctx: int = 8192  # tokens: the embedded model's window when context_window is not set
    context_window: int | None = None  # tokens; None: what the server states (see chatcli.planner)
    compact_at: float | None = None  # share of the window at which /compact runs by itself (None: never)
    compact_keep: int = COMPACT_KEEP  # the newest turns /compact keeps whole; it summarises the ones before
    threads: int | None = None  # the embedded model's CPU threads (None: all cores)
    keep_alive: str | None = None  # Ollama's keep_alive, e.g. "5m" (None: not sent)
    think: bool | None = None  # Ollama's think: a thinking model reasons or not (None: the model's default)
    show_reasoning: bool = True  # the REPL streams a reply's reasoning dimmed (else only its folded line)
    tools: list[str] = field(default_factory=list)  # the MCP servers whose tools a session uses (names)
    approve: list[str] = field(default_factory=list)  # server.tool patterns that run without asking
    tool_timeout: float = 60.0  # seconds a tool call may take
    max_tool_rounds: int = 10  # requests per turn that may answer tool calls
    mcp_servers: dict[str, Any] = field(default_factory=dict)  # name -> chatcli.mcp_client.ServerConfig
    state_dir: Path = Path(".")
    config_path: Path | None = None


def config_path(env: dict[str, str]) -> Path:
    """The config file's path: ``CHATCLI_CONFIG`` (``~`` expanded), else ``config.toml`` in the platform's
    user config folder. The file need not exist."""
    if env.get("CHATCLI_CONFIG"):
        return expanded(env["CHATCLI_CONFIG"])
    from platformdirs import user_config_path

    return user_config_path("chatcli") / "config.toml"


def state_dir(env: dict[str, str]) -> Path:
    """Where chatcli keeps the REPL's input history and the model server's log: ``CHATCLI_STATE_DIR``
    (``~`` expanded), else the platform's user state folder. Not created here."""
    if env.get("CHATCLI_STATE_DIR"):
        return expanded(env["CHATCLI_STATE_DIR"])
    from platformdirs import user_state_path

    return user_state_path("chatcli")


def read_config_file(path: Path) -> dict[str, Any]:
    """The config file's settings, a dict of FILE_KEYS keys to TOML values ({} when the file does not
    exist). Raises ConfigError naming the file when it cannot be read, is not valid TOML, or holds an
    unknown key or a value of the wrong type (a boolean is the right type only of a yes/no setting)."""
    import tomllib

    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8", errors="replace"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
    for key, value in data.items():
        if key not in FILE_KEYS:
            raise ConfigError(f"config file {path}: unknown setting {key!r} (known: {', '.join(FILE_KEYS)})")
        typ = FILE_KEYS[key]
        if not isinstance(value, typ) or (isinstance(value, bool) and typ is not bool):
            raise ConfigError(f"config file {path}: {key} has the wrong type ({type(value).__name__})")
    for key in ("approve", "tools"):
        if isinstance(data.get(key), list) and not all(isinstance(v, str) for v in data[key]):
            raise ConfigError(f"config file {path}: {key} must be a list of strings")
    if "mcp" in data:
        data["mcp_servers"] = _mcp_servers(data.pop("mcp"), path)
    return data


def _mcp_servers(table: dict[str, Any], path: Path) -> dict[str, Any]:
    """The ``[mcp.servers.NAME]`` tables as ServerConfigs; ConfigError naming the file and the key."""
    from chatcli.mcp_client import ServerConfig

    if set(table) - {"servers"} or not isinstance(table.get("servers", {}), dict):
        raise ConfigError(f"config file {path}: mcp holds only servers ([mcp.servers.NAME] tables)")
    try:
        return {name: ServerConfig.from_table(name, t) for name, t in table.get("servers", {}).items()}
    except ConfigError as e:
        raise ConfigError(f"config file {path}: {e}") from None


def resolve(flags: dict[str, Any], env: dict[str, str] | None = None) -> Settings:
    """The Settings from ``flags`` (a dict of Settings field names, ``sessions_dir`` meaning ``store``;
    None = not given) over the environment (``env``, default ``os.environ``), the config file and the
    defaults. Raises ConfigError for a bad config file, an unknown backend, a base URL that is not
    http(s), a store that can never work, or a value out of range (timeouts must be positive seconds)."""
    env = dict(os.environ) if env is None else env
    path = config_path(env)
    file = read_config_file(path)
    merged: dict[str, Any] = dict(file)
    # The store's older name, sessions_dir, gives way to store at the same level (file < env < flag).
    if "sessions_dir" in merged:
        merged.setdefault("store", merged.pop("sessions_dir"))
    env_map = {
        "CHATCLI_BACKEND": "backend",
        "CHATCLI_MODEL": "model",
        "CHATCLI_SESSIONS_DIR": "store",
        "CHATCLI_STORE": "store",
    }
    for var, key in env_map.items():
        if env.get(var):
            merged[key] = env[var]
    for key, value in flags.items():
        if value is not None:
            merged["store" if key == "sessions_dir" else key] = value

    from chatcli import backends

    backend, base_url = backends.choose(merged.get("backend"), merged.get("base_url") or "", env)
    s = Settings(
        backend=backend,
        base_url=base_url,
        config_path=path,
        state_dir=state_dir(env),
        api_key=backends.api_key(env),
    )
    for f in fields(Settings):
        if f.name in merged and f.name not in ("backend", "base_url"):
            setattr(s, f.name, merged[f.name])
    s.store = str(s.store)
    from chatcli.stores import parse_store

    parse_store(s.store)  # a store name that can never work is a usage error, found before anything runs
    if s.model_path is not None:
        s.model_path = expanded(str(s.model_path))
    from chatcli.messages import check_size

    check_size(s.system, "the system prompt")
    for name in ("timeout", "connect_timeout", "idle_timeout", "store_timeout"):
        value = getattr(s, name)
        if not isinstance(value, (int, float)) or not 0 < value < 10**9:  # (nan and inf are no timeout)
            raise ConfigError(f"{name.replace('_', ' ')} must be a positive number of seconds, not {value!r}")
        setattr(s, name, float(value))
    from chatcli.messages import GenerationParams

    sampling = GenerationParams(s.temperature, s.max_tokens, s.top_p, s.repeat_penalty).problem()
    if sampling is not None:
        raise ConfigError(sampling)
    if s.context_window is not None and not 64 <= s.context_window <= MAX_WINDOW:
        raise ConfigError(
            f"context_window must be from 64 to {MAX_WINDOW:,} tokens, not {s.context_window:,}"
        )
    if not 64 <= s.n_ctx <= MAX_WINDOW:
        raise ConfigError(f"n_ctx must be from 64 to {MAX_WINDOW:,} tokens, not {s.n_ctx:,}")
    if s.threads is not None and not 1 <= s.threads <= 1024:
        raise ConfigError(f"threads must be from 1 to 1,024, not {s.threads:,}")
    _check_tools(s)
    if not 1 <= s.compact_keep <= 1000:
        raise ConfigError(f"compact_keep must be from 1 to 1,000 turns, not {s.compact_keep:,}")
    if s.compact_at is not None and not 0 < s.compact_at <= 1:
        raise ConfigError(
            f"compact_at must be above 0 and at most 1 (a share of the window), not {s.compact_at}"
        )
    return s


def _names(value: Any) -> list[str]:
    """A list of names from a list, or from a comma-separated string (as a flag gives them)."""
    items = value.split(",") if isinstance(value, str) else value
    return [str(v).strip() for v in items if str(v).strip()]


def _check_tools(s: Settings) -> None:
    """``tools`` as a list of configured server names (a string is comma-separated); the tool limits."""
    s.tools = _names(s.tools)
    for name in s.tools:
        if name not in s.mcp_servers:
            known = ", ".join(s.mcp_servers) or "none: add [mcp.servers.NAME] tables to the config file"
            raise ConfigError(f"no MCP server named {name!r} (configured: {known})")
    s.approve = _names(s.approve)
    if not isinstance(s.tool_timeout, (int, float)) or not 0 < s.tool_timeout < 10**9:
        raise ConfigError(f"tool timeout must be a positive number of seconds, not {s.tool_timeout!r}")
    s.tool_timeout = float(s.tool_timeout)
    if not 1 <= s.max_tool_rounds <= 1000:
        raise ConfigError(f"max_tool_rounds must be from 1 to 1,000, not {s.max_tool_rounds:,}")
