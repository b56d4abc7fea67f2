"""Small commands: ``models`` (what a server offers) and ``completion`` (a shell completion script).
Registered on the Typer app by ``cli.py``."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from chatcli.cli_common import (
    COMPLETE_VAR,
    AsJSON,
    BackendOpt,
    BaseURLOpt,
    ModelPathOpt,
    backend_for,
    exit_with,
    fail_usage,
    print_json,
    renderer,
    settings,
    timeouts,
)
from chatcli.errors import ChatcliError

SHELLS = ("bash", "zsh", "fish")


def models(
    backend: BackendOpt = None,
    base_url: BaseURLOpt = None,
    model_path: ModelPathOpt = None,
    as_json: AsJSON = False,
) -> None:
    """The models a server offers (OpenAI-compatible `/v1/models`, Ollama's `/api/tags`); for the local
    backend, the model file it serves and its context length (its server is started to ask)."""

    try:
        s = settings({"backend": backend, "base_url": base_url, "model_path": model_path})
        server = backend_for(s, s.backend, s.model, s.base_url, s.model_path)
        try:
            found = server.list_models(timeouts(s))
        finally:
            server.close()
    except ChatcliError as e:
        exit_with(e)
    if as_json:
        print_json([{"name": m.name, **m.details} for m in found])
        return
    out = renderer()
    if not found:
        out.info(f"{server.base_url or s.backend} offers no models.")
        return
    for m in found:
        details = ", ".join(f"{k} {_shown(k, v)}" for k, v in m.details.items())
        sys.stdout.write(f"{m.name}" + (f"  ({details})" if details else "") + "\n")


def _shown(key: str, value: object) -> str:
    if isinstance(value, int) and key in ("size",):
        return f"{value / 1e6:,.0f} MB"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def completion(shell: Annotated[str, typer.Argument(metavar="bash|zsh|fish", help="Your shell.")]) -> None:
    """Print the shell completion script for chatcli: `eval "$(chatcli completion bash)"` in ~/.bashrc
    (zsh: in ~/.zshrc; fish: `chatcli completion fish > ~/.config/fish/completions/chatcli.fish`)."""
    if shell not in SHELLS:
        fail_usage(f"no completion for {shell!r}: choose one of {', '.join(SHELLS)}")
    from typer.completion import get_completion_script  # type: ignore[attr-defined]  # re-exported

    sys.stdout.write(
        get_completion_script(prog_name="chatcli", complete_var=COMPLETE_VAR, shell=shell) + "\n"
    )


def register(app: typer.Typer) -> None:
    app.command()(models)
    app.command()(completion)
