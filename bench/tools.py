"""Time to the prompt with two stdio MCP servers configured and picked (``--tools time,own``: the reference
``mcp-server-time`` and the tests' own server) against the same command without them, in a pseudo-terminal,
interleaved (the servers start in the background once the prompt is drawn: the target is +50 ms at most);
and a tool call's round trip through ``ToolRunner`` and ``MCPServers`` for a tool that does nothing
(``echo``), measured in this process once the server is ready (target: 30 ms at most)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from common import PYTHON, Report, Row, child_env, interleaved, median
from startup import _repl

GROUP = "Tools"
HERE = Path(__file__).parent
OWN = HERE.parent / "tests" / "mcp_test_server.py"


def _config(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / "config.toml"
    time_server = Path(PYTHON).parent / "mcp-server-time"
    path.write_text(
        f'[mcp.servers.time]\ncommand = "{time_server}"\n'
        f'[mcp.servers.own]\ncommand = "{PYTHON}"\nargs = ["{OWN}"]\n'
    )
    return path


def _round_trip(root: Path, calls: int) -> list[float]:
    sys.path.insert(0, str(HERE.parent))
    from chatcli.mcp_client import MCPServers, ServerConfig
    from chatcli.model import ToolCallPart
    from chatcli.tools import ToolRunner

    with MCPServers([ServerConfig("own", command=PYTHON, args=(str(OWN),))], root / "logs") as servers:
        servers.start()
        servers.wait_ready(30)
        runner = ToolRunner(servers, approve=["own.*"])
        out = []
        for _ in range(calls):
            t0 = time.perf_counter()
            runner.run(ToolCallPart("c", "echo", '{"text": "x"}'), None)
            out.append(time.perf_counter() - t0)
    return out


def run(report: Report, folder: Path, quick: bool = False) -> None:
    root = folder / "tools"
    env = child_env(root, PROMPT_TOOLKIT_NO_CPR="1", NO_COLOR="1", CHATCLI_CONFIG=str(_config(root)))
    args = ["new", "--backend", "openai", "--base-url", "http://127.0.0.1:9/v1"]  # (not asked before a turn)
    runs = 5 if quick else 11
    _repl(args, env)  # warm the caches
    without, with_tools = interleaved(
        runs, lambda: _repl(args, env)[0], lambda: _repl([*args, "--tools", "time,own"], env)[0]
    )
    base, tooled = median(without) * 1000, median(with_tools) * 1000
    report.add(Row(GROUP, "time to prompt: chatcli new (no tools)", base, "ms", runs=runs))
    report.add(
        Row(
            GROUP,
            "time to prompt: chatcli new --tools time,own (2 stdio servers)",
            tooled,
            "ms",
            base,
            "≤ floor + 50 ms",
            tooled <= base + 50,
            runs=runs,
        )
    )
    trips = _round_trip(root, 30 if quick else 200)
    rtt = median(trips) * 1000
    report.add(
        Row(
            GROUP,
            "tool call round trip (echo, approved)",
            rtt,
            "ms",
            None,
            "≤ 30 ms",
            rtt <= 30,
            runs=len(trips),
        )
    )
