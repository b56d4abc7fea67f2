"""Model servers chatcli talks to: ``openai`` (any OpenAI-compatible server), ``ollama`` (native API) and
``local`` (the embedded llama.cpp model). ``make_backend`` builds one from a name and settings."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from chatcli.errors import ConfigError

if TYPE_CHECKING:
    from chatcli.backends.base import Backend


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
    log_path: Path | None = None,
) -> Backend:
    """A backend by name. ``model``/``base_url`` "" mean the backend's default. Raises ConfigError."""
    if name == "openai":
        from chatcli.backends.openai import DEFAULT_BASE_URL, OpenAIBackend

        return OpenAIBackend(base_url or DEFAULT_BASE_URL, model or "gpt-4o-mini", api_key)
    if name == "ollama":
        from chatcli.backends.ollama import DEFAULT_HOST, OllamaBackend

        return OllamaBackend(base_url or DEFAULT_HOST, model or "llama3.2", keep_alive=keep_alive)
    if name == "local":
        from chatcli.backends.local import LocalBackend

        backend = LocalBackend(model_path, n_ctx=n_ctx, threads=threads, log_path=log_path)
        if model:
            backend.model = model
        return backend
    raise ConfigError(f"unknown backend {name!r}: choose one of local, openai, ollama")
