"""Small commands: ``models`` (what a server offers), ``tools`` (the MCP servers configured and their
tools) and ``completion`` (a shell completion script).
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
    if isinstance(value, int) and not isinstance(value, bool) and key == "created" and 0 <= value < 2**34:
        from datetime import UTC, datetime

        return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d")  # (Unix seconds)
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


def tools(
    names: Annotated[
        str | None,
        typer.Option(
            "--tools", metavar="NAME[,NAME]", help="Only these servers (default: every one configured)."
        ),
    ] = None,
    as_json: AsJSON = False,
) -> None:
    """List the MCP servers of the config file (its mcp.servers.NAME tables): each is started, and its state
    and tools are shown (then it is stopped). Exit 1 when one is not available."""
    from chatcli.mcp_client import MCPServers

    try:
        s = settings({"tools": names})
    except ChatcliError as e:
        exit_with(e)
    picked = s.tools or list(s.mcp_servers)
    with MCPServers([s.mcp_servers[n] for n in picked], s.state_dir / "mcp") as servers:
        servers.start()
        servers.wait_ready(servers.start_timeout + 1)
        states = list(servers.states.values())
        failed = [st for st in states if st.state != "ready"]
        if as_json:
            print_json(
                [
                    {
                        "name": st.name,
                        "state": st.state,
                        "error": st.error,
                        "tools": [
                            {"name": t.name, "description": t.description, "parameters": t.parameters}
                            for t in st.tools
                        ],
                    }
                    for st in states
                ]
            )
        else:
            renderer().tool_states(states)
    if failed:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command()(models)
    app.command()(tools)
    app.command()(completion)
