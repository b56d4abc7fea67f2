"""Settings resolution: flags > environment > config file > defaults, and errors that name their source."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from chatcli import config
from chatcli.config import Settings, read_config_file, resolve
from chatcli.errors import ConfigError
from chatcli.stores import parse_store
from chatcli.stores.spool import spool_folder


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    return tmp_path / "conf" / "config.toml"


def env_for(cfg: Path, **extra: str) -> dict[str, str]:
    return {"CHATCLI_CONFIG": str(cfg), "CHATCLI_STATE_DIR": str(cfg.parent / "state"), **extra}


def write(cfg: Path, text: str) -> Path:
    cfg.parent.mkdir(parents=True, exist_ok=True)
    cfg.write_text(text, encoding="utf-8")
    return cfg


def no_flags(**given: Any) -> dict[str, Any]:
    """Flags as the CLI passes them: every known one, None when not given."""
    flags: dict[str, Any] = {
        k: None
        for k in (
            "backend",
            "model",
            "base_url",
            "system",
            "temperature",
            "max_tokens",
            "timeout",
            "store",
            "title",
        )
    }
    flags.update(given)
    return flags


def test_defaults_without_file_or_environment(cfg: Path) -> None:
    s = resolve(no_flags(), env_for(cfg))
    assert s.backend == "local"
    assert s.model == "" and s.base_url == "" and s.system == "" and s.title == ""
    assert s.api_key is None
    assert s.temperature is None and s.max_tokens is None
    assert (s.timeout, s.connect_timeout, s.idle_timeout) == (600.0, 10.0, 120.0)
    assert s.store == "sessions" and s.store_timeout == 10.0
    assert s.model_path is None and s.n_ctx == 8192 and s.keep_alive is None
    assert s.config_path == cfg
    assert s.state_dir == cfg.parent / "state"


def test_file_then_env_then_flag(cfg: Path, tmp_path: Path) -> None:
    write(
        cfg,
        'backend = "ollama"\nmodel = "file-model"\nsessions_dir = "/file/sessions"\n'
        'system = "file system"\ntemperature = 0.5\nmax_tokens = 100\n',
    )
    from_file = resolve(no_flags(), env_for(cfg))
    assert (from_file.backend, from_file.model, from_file.store) == ("ollama", "file-model", "/file/sessions")
    assert (from_file.system, from_file.temperature, from_file.max_tokens) == ("file system", 0.5, 100)

    env = env_for(cfg, CHATCLI_BACKEND="openai", CHATCLI_MODEL="env-model", CHATCLI_SESSIONS_DIR="/env/s")
    from_env = resolve(no_flags(), env)
    assert (from_env.backend, from_env.model, from_env.store) == ("openai", "env-model", "/env/s")
    assert from_env.system == "file system"  # the environment does not set it: the file still does

    from_flags = resolve(
        no_flags(
            backend="local",
            model="flag-model",
            store=str(tmp_path / "f"),
            system="flag system",
            temperature=1.5,
            max_tokens=7,
        ),
        env,
    )
    assert (from_flags.backend, from_flags.model, from_flags.store) == (
        "local",
        "flag-model",
        str(tmp_path / "f"),
    )
    assert (from_flags.system, from_flags.temperature, from_flags.max_tokens) == ("flag system", 1.5, 7)


def test_empty_environment_values_do_not_override(cfg: Path) -> None:
    write(cfg, 'model = "file-model"\n')
    s = resolve(no_flags(), env_for(cfg, CHATCLI_MODEL=""))
    assert s.model == "file-model"


def test_timeouts_from_file_and_flag(cfg: Path) -> None:
    write(cfg, "timeout = 30\nconnect_timeout = 2.5\nidle_timeout = 45\n")
    s = resolve(no_flags(), env_for(cfg))
    assert (s.timeout, s.connect_timeout, s.idle_timeout) == (30.0, 2.5, 45.0)
    assert isinstance(s.timeout, float) and isinstance(s.idle_timeout, float)
    assert resolve(no_flags(timeout=5), env_for(cfg)).timeout == 5.0


def test_every_file_key_is_accepted(cfg: Path) -> None:
    write(
        cfg,
        'backend = "ollama"\nmodel = "m"\nbase_url = "http://h:1"\nsystem = "s"\ntemperature = 1\n'
        'max_tokens = 9\ntimeout = 9\nconnect_timeout = 9\nidle_timeout = 9\nsessions_dir = "d"\n'
        'model_path = "~/m.gguf"\nn_ctx = 2048\nthreads = 3\nkeep_alive = "10m"\n'
        'store = "sqlite:////x/chats.db"\nstore_timeout = 4\ntop_p = 0.5\nrepeat_penalty = 1.2\n'
        "context_window = 4096\ncompact_at = 0.8\ncompact_keep = 3\nthink = true\nshow_reasoning = false\n"
        'tools = ["time"]\napprove = ["time.*"]\ntool_timeout = 5\nmax_tool_rounds = 3\n'
        '[mcp.servers.time]\ncommand = "mcp-server-time"\nargs = ["--local-timezone", "UTC"]\n',
    )
    assert set(read_config_file(cfg)) == set(config.FILE_KEYS) - {"mcp"} | {"mcp_servers"}
    s = resolve(no_flags(), env_for(cfg, HOME=str(cfg.parent)))
    assert (s.backend, s.base_url, s.n_ctx, s.threads, s.keep_alive) == (
        "ollama",
        "http://h:1",
        2048,
        3,
        "10m",
    )
    assert (s.store, s.store_timeout) == ("sqlite:////x/chats.db", 4.0)  # store wins over its older name
    assert s.model_path == Path.home() / "m.gguf"
    assert (s.think, s.show_reasoning) == (True, False)
    assert (s.tools, s.approve, s.tool_timeout, s.max_tool_rounds) == (["time"], ["time.*"], 5.0, 3)
    assert s.mcp_servers["time"].args == ("--local-timezone", "UTC")
    assert (s.compact_at, s.compact_keep) == (0.8, 3)


@pytest.mark.parametrize("keep", [0, 1001])
def test_compact_keep_out_of_range_is_one_line(cfg: Path, keep: int) -> None:
    write(cfg, f"compact_keep = {keep}\n")
    with pytest.raises(ConfigError) as e:
        resolve(no_flags(), env_for(cfg))
    assert str(e.value) == f"compact_keep must be from 1 to 1,000 turns, not {keep:,}"


def test_sessions_dir_tilde_is_expanded(cfg: Path, user_dirs: dict[str, Path]) -> None:
    s = resolve(no_flags(store="~/chats"), env_for(cfg))
    url = parse_store(s.store)
    assert (url.kind, url.path, url.display) == (
        "folder",
        user_dirs["home"] / "chats",
        str(user_dirs["home"] / "chats"),
    )


def test_store_precedence_and_its_older_name(cfg: Path) -> None:
    write(cfg, 'sessions_dir = "/file/old"\n')
    assert resolve(no_flags(), env_for(cfg)).store == "/file/old"
    write(cfg, 'sessions_dir = "/file/old"\nstore = "/file/new"\n')
    assert resolve(no_flags(), env_for(cfg)).store == "/file/new"
    env = env_for(cfg, CHATCLI_SESSIONS_DIR="/env/old")
    assert resolve(no_flags(), env).store == "/env/old"
    env["CHATCLI_STORE"] = "postgresql://ann@db.example/chats"
    assert resolve(no_flags(), env).store == "postgresql://ann@db.example/chats"
    assert resolve(no_flags(store="mysql://bob@h/c"), env).store == "mysql://bob@h/c"
    assert resolve({**no_flags(), "store": None, "sessions_dir": "/flag/old"}, env).store == "/flag/old"


@pytest.mark.parametrize(
    "bad, phrase",
    [
        ("redis://h/0", "unknown store"),
        ("sqlite://", "names no database file"),
        ("postgresql:///chats", "names no host"),
        ("mysql://u@h", "names no database"),
        ("mysql://u:s3cret@h", "names no database"),
        ("", "empty"),
    ],
)
def test_a_store_that_can_never_work_is_a_usage_error(cfg: Path, bad: str, phrase: str) -> None:
    with pytest.raises(ConfigError, match=phrase) as info:
        resolve(no_flags(store=bad), env_for(cfg))
    assert "s3cret" not in str(info.value)


def test_store_urls_are_shown_with_the_password_masked() -> None:
    url = parse_store("postgresql://ann:pa%3Ass@db.example:5433/chats?sslmode=require")
    assert url.kind == "postgresql" and url.password == "pa:ss"
    assert url.libpq_params() == {
        "host": "db.example",
        "port": "5433",
        "user": "ann",
        "password": "pa:ss",
        "dbname": "chats",
        "sslmode": "require",
    }
    assert url.display == "postgresql://ann:***@db.example:5433/chats?sslmode=require"
    assert url.address == "postgresql://ann@db.example:5433/chats?sslmode=require"
    assert "pa%3Ass" not in repr(url) and "pa:ss" not in repr(url)
    assert parse_store("mariadb://bob@h/c").kind == "mysql"
    assert parse_store("postgres://h/c").kind == "postgresql"
    sqlite = parse_store("sqlite:////abs/c.db")
    assert (sqlite.kind, sqlite.path, sqlite.display) == ("sqlite", Path("/abs/c.db"), "sqlite:////abs/c.db")
    assert parse_store("sqlite://rel/c.db").path == Path("rel/c.db")
    assert parse_store("mysql://u:p@[::1]:3306/d").display == "mysql://u:***@[::1]:3306/d"
    key = parse_store("postgresql://a@h/db?sslpassword=k3y-s3cret&sslmode=require")
    assert (key.display, key.address) == (
        "postgresql://a@h/db?sslmode=require&sslpassword=***",
        "postgresql://a@h/db?sslmode=require",
    )
    assert key.libpq_params()["sslpassword"] == "k3y-s3cret" and "k3y-s3cret" not in repr(key)
    raw = parse_store(
        "postgresql://ann:pa#ss/w?rd@db:5433/chats"
    )  # not encoded: the user part ends at the last @
    assert (raw.password, raw.hosts[0].name, raw.database) == ("pa#ss/w?rd", "db", "chats")
    assert raw.display == "postgresql://ann:***@db:5433/chats"


def test_sqlite_three_slashes_are_taken_in_the_reading_whose_file_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "abs.db").touch()  # sqlite://{tmp_path}/abs.db: only the absolute reading exists
    url = parse_store(f"sqlite://{tmp_path}/abs.db")
    assert (url.path, url.display) == (tmp_path / "abs.db", f"sqlite:///{tmp_path}/abs.db")
    assert url.identity == parse_store(f"sqlite:///{tmp_path}/abs.db").identity
    assert not Path("/chatcli-rel.db").exists()
    (tmp_path / "chatcli-rel.db").touch()  # sqlite:///chatcli-rel.db: only the relative reading exists
    url = parse_store("sqlite:///chatcli-rel.db")
    assert (url.path, url.display) == (Path("chatcli-rel.db"), "sqlite://chatcli-rel.db")
    same = parse_store("sqlite://chatcli-rel.db")
    assert url.identity == same.identity == f"sqlite:{tmp_path / 'chatcli-rel.db'}"
    assert spool_folder(tmp_path, url) == spool_folder(tmp_path, same)  # one file, one spool
    assert parse_store("sqlite://~/c.db").path == Path("~/c.db").expanduser()  # (no slash after //: as ever)


def test_sqlite_three_slashes_naming_no_file_or_two_are_refused_with_both_spellings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert not Path("/chats.db").exists()
    with pytest.raises(ConfigError) as info:
        parse_store("sqlite:///chats.db")
    assert str(info.value) == (
        "'sqlite:///chats.db' could name /chats.db or ./chats.db, and neither exists yet: write "
        "sqlite:////chats.db for /chats.db or sqlite://chats.db for ./chats.db"
    )
    rel = str(tmp_path).lstrip("/")
    (tmp_path / "both.db").touch()
    (tmp_path / rel).mkdir(parents=True)
    (tmp_path / rel / "both.db").touch()
    with pytest.raises(ConfigError) as info:
        parse_store(f"sqlite://{tmp_path}/both.db")
    assert str(info.value) == (
        f"'sqlite://{tmp_path}/both.db' could name {tmp_path}/both.db or ./{rel}/both.db, and both exist: "
        f"write sqlite:///{tmp_path}/both.db for {tmp_path}/both.db or sqlite://{rel}/both.db for ./{rel}/both.db"
    )
    assert parse_store(f"sqlite:///{tmp_path}/both.db").path == tmp_path / "both.db"  # (unambiguous forms)
    assert parse_store(f"sqlite://{rel}/both.db").path == Path(rel) / "both.db"


@pytest.mark.parametrize(
    "bad, message",
    [
        (
            "postgresql://u:s3cret@h:99999/d",
            "'postgresql://u:***@h:99999/d': the port must be a number from 1 to 65535",
        ),
        (
            "postgresql://u:s3cret@h:5x/d",
            "'postgresql://u:***@h:5x/d': the port must be a number from 1 to 65535",
        ),
        (
            "postgresql://u:s3cret@[::zz]/d",
            "'postgresql://u:***@[::zz]/d': [::zz] is not an IPv6 address (e.g. [::1] or [2001:db8::5])",
        ),
        (
            "mysql://u:s3cret@h/d?foo=1",
            "'mysql://u:***@h/d?foo=1': a MySQL store does not take the option 'foo' (it takes unix_socket, ssl_ca, ssl_cert, ssl_key, ssl_verify_cert, ssl_verify_identity)",
        ),
        (
            "mysql://u:s3cret@h/d?ssl_verify_cert=maybe",
            "the store option ssl_verify_cert is true or false, not 'maybe'",
        ),
        (
            "sqlite:///x/c.db?mode=ro",
            "'sqlite:///x/c.db?mode=ro': an SQLite store takes no options (?mode=ro); a '?' in a file name is written %3F",
        ),
        (
            "redis://u:s3cret@h/0",
            "unknown store 'redis://': use a folder path, sqlite://FILE, postgresql://user@host/db or mysql://user@host/db",
        ),
        (
            "postgresql://u:s3cret@h/d#x",
            "'postgresql://u:***@h/d#x': a store URL has no '#' part; write a '#' in a name as %23",
        ),
    ],
)
def test_a_store_url_that_cannot_work_says_why_without_its_password(bad: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_store(bad)
    assert str(info.value).startswith(message) and "s3c" not in str(info.value), str(info.value)


def test_api_key_comes_from_the_environment_only(cfg: Path) -> None:
    s = resolve(no_flags(), env_for(cfg, OPENAI_API_KEY="sk-env"))
    assert s.api_key == "sk-env"
    assert "sk-env" not in repr(s)
    write(cfg, 'api_key = "sk-file"\n')
    with pytest.raises(ConfigError, match="unknown setting 'api_key'"):
        resolve(no_flags(), env_for(cfg))


def test_os_environ_is_used_by_default(monkeypatch: pytest.MonkeyPatch, user_dirs: dict[str, Path]) -> None:
    monkeypatch.setenv("CHATCLI_MODEL", "from-os-environ")
    s = resolve(no_flags())
    assert s.model == "from-os-environ"
    assert s.store == str(user_dirs["sessions"])
    assert s.config_path == user_dirs["config"]


def test_default_config_path_is_the_user_config_folder(user_dirs: dict[str, Path]) -> None:
    assert config.config_path({}) == user_dirs["home"] / ".config" / "chatcli" / "config.toml"
    assert config.state_dir({}) == user_dirs["home"] / ".local" / "state" / "chatcli"


# ---------------------------------------------------------------------------------- backend inference


def test_base_url_flag_alone_means_openai(cfg: Path) -> None:
    s = resolve(no_flags(base_url="http://127.0.0.1:8080/v1"), env_for(cfg))
    assert (s.backend, s.base_url) == ("openai", "http://127.0.0.1:8080/v1")


def test_openai_base_url_env_means_openai(cfg: Path) -> None:
    s = resolve(no_flags(), env_for(cfg, OPENAI_BASE_URL="http://llm.lan/v1"))
    assert (s.backend, s.base_url) == ("openai", "http://llm.lan/v1")


def test_base_url_in_file_means_openai(cfg: Path) -> None:
    write(cfg, 'base_url = "https://api.example.com/v1"\n')
    s = resolve(no_flags(), env_for(cfg))
    assert (s.backend, s.base_url) == ("openai", "https://api.example.com/v1")


def test_nothing_means_local(cfg: Path) -> None:
    s = resolve(no_flags(), env_for(cfg, OLLAMA_HOST="box"))  # OLLAMA_HOST alone does not pick ollama
    assert (s.backend, s.base_url) == ("local", "")


def test_explicit_backend_wins_over_inference(cfg: Path) -> None:
    s = resolve(no_flags(backend="ollama"), env_for(cfg, OPENAI_BASE_URL="http://llm.lan/v1"))
    assert s.backend == "ollama"
    assert s.base_url == "http://127.0.0.1:11434"  # OPENAI_BASE_URL is not Ollama's address


def test_ollama_base_url_from_ollama_host(cfg: Path) -> None:
    s = resolve(no_flags(backend="ollama"), env_for(cfg, OLLAMA_HOST="0.0.0.0:11500"))
    assert s.base_url == "http://127.0.0.1:11500"
    s = resolve(no_flags(backend="ollama", base_url="http://other:1"), env_for(cfg, OLLAMA_HOST="box"))
    assert s.base_url == "http://other:1"


def test_openai_without_base_url_leaves_the_default_to_the_backend(cfg: Path) -> None:
    s = resolve(no_flags(backend="openai"), env_for(cfg))
    assert (s.backend, s.base_url) == ("openai", "")


# ------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("text", "phrase"),
    [
        ('colour = "blue"\n', "unknown setting 'colour'"),
        ('temperature = "hot"\n', "temperature has the wrong type (str)"),
        ("max_tokens = 1.5\n", "max_tokens has the wrong type (float)"),
        ("max_tokens = true\n", "max_tokens has the wrong type (bool)"),
        ("timeout = true\n", "timeout has the wrong type (bool)"),
        ('model = ["a"]\n', "model has the wrong type (list)"),
        ("[backend]\nname = 'x'\n", "backend has the wrong type (dict)"),
        ('model = "unterminated\n', "is not valid TOML"),
        ("= 3\n", "is not valid TOML"),
    ],
)
def test_bad_config_file_names_the_file(cfg: Path, text: str, phrase: str) -> None:
    write(cfg, text)
    with pytest.raises(ConfigError) as info:
        resolve(no_flags(), env_for(cfg))
    assert str(cfg) in str(info.value)
    assert phrase in str(info.value)
    assert info.value.exit_code == 2


def test_config_path_that_is_a_folder(cfg: Path) -> None:
    cfg.mkdir(parents=True)
    with pytest.raises(ConfigError, match="cannot read config file") as info:
        resolve(no_flags(), env_for(cfg))
    assert str(cfg) in str(info.value)


@pytest.mark.parametrize(("source", "value"), [("flag", "gemini"), ("env", "gpt"), ("file", "llamafile")])
def test_unknown_backend(cfg: Path, source: str, value: str) -> None:
    env = env_for(cfg)
    flags = no_flags()
    if source == "flag":
        flags["backend"] = value
    elif source == "env":
        env["CHATCLI_BACKEND"] = value
    else:
        write(cfg, f'backend = "{value}"\n')
    with pytest.raises(ConfigError) as info:
        resolve(flags, env)
    assert f"unknown backend {value!r}" in str(info.value)
    assert "local, openai, ollama" in str(info.value)


@pytest.mark.parametrize(
    ("where", "name", "value"),
    [
        ("flag", "timeout", 0),
        ("flag", "timeout", -5.0),
        ("file", "timeout", 0),
        ("file", "connect_timeout", -1),
        ("file", "idle_timeout", 0.0),
    ],
)
def test_non_positive_timeout(cfg: Path, where: str, name: str, value: float) -> None:
    flags = no_flags()
    if where == "flag":
        flags[name] = value
    else:
        write(cfg, f"{name} = {value}\n")
    with pytest.raises(ConfigError) as info:
        resolve(flags, env_for(cfg))
    message = str(info.value)
    assert message.startswith(name.replace("_", " ") + " must be a positive number of seconds")
    assert repr(value) in message


@pytest.mark.parametrize("value", [-0.1, 2.5])
def test_temperature_out_of_range(cfg: Path, value: float) -> None:
    with pytest.raises(ConfigError, match=f"temperature must be between 0 and 2, not {value}"):
        resolve(no_flags(temperature=value), env_for(cfg))


@pytest.mark.parametrize("url", ["localhost:8080", "ftp://x", "127.0.0.1:11434/v1"])
def test_base_url_without_scheme(cfg: Path, url: str) -> None:
    with pytest.raises(ConfigError, match="must start with http:// or https://"):
        resolve(no_flags(base_url=url), env_for(cfg))


def test_settings_repr_hides_the_key() -> None:
    assert "secret" not in repr(Settings(api_key="secret"))


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ('[mcp.servers.time]\ncomand = "x"\n', "mcp.servers.time.comand is not a server setting"),
        ('[mcp.servers.time]\nargs = ["a"]\n', "mcp.servers.time needs either command"),
        ("[mcp]\nserver = 1\n", "mcp holds only servers"),
        ('tools = ["nope"]\n', "no MCP server named 'nope'"),
        ("approve = [1]\n", "approve must be a list of strings"),
        ("max_tool_rounds = 0\n", "max_tool_rounds must be from 1"),
    ],
)
def test_a_mistyped_tools_setting_is_one_line(cfg: Path, text: str, said: str) -> None:
    write(cfg, text)
    with pytest.raises(ConfigError) as e:
        resolve(no_flags(), env_for(cfg))
    assert said in str(e.value) and "\n" not in str(e.value)
