"""Model servers chatcli talks to: ``openai`` (any OpenAI-compatible server), ``ollama`` (native API) and
``local`` (the embedded llama.cpp model). ``make_backend`` builds one from a name and settings."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from chatcli.errors import ConfigError

if TYPE_CHECKING:
    from chatcli.backends.base import Backend
    from chatcli.messages import GenerationParams

NAMES = ("local", "openai", "ollama")


def choose(backend: str | None, base_url: str, env: Mapping[str, str]) -> tuple[str, str]:
    """The tuple (backend name, base URL; "" for the backend's default) to use, from what was chosen
    (``None``/``""``: nothing) and the environment: with no backend chosen, a base URL (given, or
    ``OPENAI_BASE_URL``) means an OpenAI-compatible server, else the embedded model; the openai backend's
    default address is ``OPENAI_BASE_URL``, Ollama's ``OLLAMA_HOST``. Raises ConfigError for an unknown
    backend or an address that is not http(s)."""
    if backend is None:
        backend = "openai" if (base_url or env.get("OPENAI_BASE_URL")) else "local"
    if backend not in NAMES:
        raise ConfigError(f"unknown backend {backend!r}: choose one of {', '.join(NAMES)}")
    if not base_url and backend == "openai":
        base_url = env.get("OPENAI_BASE_URL", "")
    if not base_url and backend == "ollama":
        from chatcli.backends.ollama import base_url_from_host

        base_url = base_url_from_host(env.get("OLLAMA_HOST"))
    if base_url and not base_url.startswith(("http://", "https://")):
        raise ConfigError(f"base URL {base_url!r} must start with http:// or https://")
    return backend, base_url


def api_key(env: Mapping[str, str]) -> str | None:
    """The key sent to an OpenAI-compatible server: ``OPENAI_API_KEY`` (never read from a file); None when
    unset or empty."""
    return env.get("OPENAI_API_KEY") or None


def default_params(name: str) -> GenerationParams:
    """The sampling a backend's model gets unless the user sets another: for the embedded SmolLM2-135M,
    its model card's (temperature 0.2, top_p 0.9), a repeat penalty, and a reply cap that stops a
    runaway repetition (512 tokens); for the others, the server's own defaults."""
    from chatcli.messages import GenerationParams

    if name == "local":
        return GenerationParams(temperature=0.2, top_p=0.9, repeat_penalty=1.1, max_tokens=512)
    return GenerationParams()


def check_model_change(name: str) -> None:
    """Raise ConfigError when backend ``name`` cannot switch models between turns (the local backend
    serves one model file)."""
    if name == "local":
        raise ConfigError(
            "the local backend serves one model file; start a session with "
            "`chatcli new --model-path FILE` to use another"
        )


def make_backend(
    name: str,
    *,
    model: str = "",
    base_url: str = "",
    api_key: str | None = None,
    model_path: Path | None = None,
    n_ctx: int = 8192,
    threads: int | None = None,
    keep_alive: str | None = None,
    think: bool | None = None,
    log_path: Path | None = None,
    context_window: int | None = None,
) -> Backend:
    """A backend by name (one of NAMES); nothing is connected or started yet. ``model``/``base_url`` ""
    mean the backend's default (openai: ``gpt-4o-mini`` at api.openai.com; ollama: ``llama3.2`` at its
    DEFAULT_HOST; local: named after its model file, ``base_url`` unused). ``context_window`` (tokens)
    is what Ollama is asked to run with (``num_ctx``) and what the local model server is started with
    (over ``n_ctx``, tokens); ``threads``, ``log_path``: the local server's; ``keep_alive``, ``think``: Ollama's.
    Raises ConfigError for an unknown name."""
    if name == "openai":
        from chatcli.backends.openai import DEFAULT_BASE_URL, OpenAIBackend

        return OpenAIBackend(base_url or DEFAULT_BASE_URL, model or "gpt-4o-mini", api_key)
    if name == "ollama":
        from chatcli.backends.ollama import DEFAULT_HOST, OllamaBackend

        return OllamaBackend(
            base_url or DEFAULT_HOST,
            model or "llama3.2",
            keep_alive=keep_alive,
            num_ctx=context_window,
            think=think,
        )
    if name == "local":
        from chatcli.backends.local import LocalBackend

        backend = LocalBackend(model_path, n_ctx=context_window or n_ctx, threads=threads, log_path=log_path)
        if model:
            backend.model = model
        return backend
    raise ConfigError(f"unknown backend {name!r}: choose one of local, openai, ollama")


def preload() -> None:
    """Import what every backend's first request needs: httpx (with ssl and the command line httpx brings
    along when rich and click are installed), httpcore with h11, and httpx_sse, about 70 ms of CPU. For a
    caller with time to spare, such as a REPL waiting for its first line, so that the first turn does not
    spend it. Never raises: an import that fails fails again, and is reported, at the first turn."""
    try:
        import httpcore  # noqa: F401  (httpx imports it only when its first client is made)
        import httpx  # noqa: F401
        import httpx_sse  # noqa: F401
    except ImportError:
        pass
