"""Child process that serves a GGUF model with xllamacpp's llama.cpp server on 127.0.0.1.

Run by LocalBackend as ``python -m chatcli.backends.llama_server --model FILE --port N --ctx N --threads N
--parent PID``. It exits on SIGTERM, and by itself within a second once the parent process is gone (so a
chatcli killed with SIGKILL leaves no server behind).
"""

from __future__ import annotations

import argparse
import os
import signal
import time


def main() -> None:
    """Serve ``--model`` on 127.0.0.1:``--port`` with a ``--ctx``-token window and ``--threads`` CPU
    threads until SIGTERM or until ``--parent`` (a pid; 0: none) is gone, checked every 0.5 s; then
    exits at once with status 0 (``os._exit``: no cleanup)."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--ctx", type=int, default=8192)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--parent", type=int, default=0)
    args = ap.parse_args()

    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in the terminal is for chatcli, not for us

    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = args.model
    params.hostnames = ["127.0.0.1"]
    params.port = args.port
    params.n_ctx = args.ctx
    params.cpuparams.n_threads = args.threads
    params.cpuparams_batch.n_threads = args.threads
    _server = xllamacpp.Server(params)  # serves on its own threads while it is referenced: until we exit
    try:
        while True:
            time.sleep(0.5)
            if args.parent and (os.getppid() != args.parent):
                break
    finally:
        os._exit(0)


if __name__ == "__main__":
    main()
