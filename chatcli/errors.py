"""chatcli's exceptions. Only ``cli.py`` and ``repl.py`` turn them into messages and exit codes.

Every exception here carries a message written for the user: one sentence they can act on.

    ChatcliError
    ├── ConfigError                    bad flag, environment variable or config file value
    ├── NothingToDo                    a REPL command with nothing to act on (undo with no turn, ...)
    ├── CommandError                   a REPL line that starts with / but names no command, or misuses one
    ├── ImportFileError                a file given to `import` that holds no conversation chatcli can read
    ├── AttachmentError                a file given to put in a message that is missing, a folder, binary, too big
    ├── SizeLimitError                 a message or system prompt larger than every store keeps (MAX_MESSAGE_BYTES)
    ├── ExportError                    an export that cannot be written (the file exists, no permission)
    ├── SessionError
    │   ├── InvalidSessionId           an id that could never name a file (``/``, ``..``, NUL, too long)
    │   ├── SessionNotFound            no session matches the id, prefix or title
    │   ├── AmbiguousSessionId         a prefix that matches several sessions
    │   ├── SessionExists              a session with that id is already there (import, restore, migrate)
    │   ├── SessionLocked              another chatcli holds the session's lock
    │   ├── SnapshotError              a snapshot that cannot be read (damaged, foreign, newer format)
    │   └── SaveError                  a snapshot could not be written (disk full, permissions, ...)
    ├── StoreError                     a store that cannot be used: wrong password, no such database,
    │   │                              unsupported server, missing driver (the message says what to do)
    │   ├── StoreUnavailable           the database does not answer: refused, timed out, connection lost
    │   └── StoreConflict              another writer saved the session since this one last read it
    ├── SessionTimeoutError            a turn hit a timeout; the partial reply was kept and saved
    └── BackendError                   the model server could not give a reply
        ├── BackendUnavailable         connection refused, unknown host, local model missing or failed
        ├── BackendTimeout             connect, idle-read or whole-turn deadline passed
        ├── BackendHTTPError           an HTTP error status (``status``, server ``message``)
        │   ├── AuthenticationError    401 / 403
        │   ├── ModelNotFound          404 (unknown model or wrong base URL)
        │   ├── RateLimited            429 (``retry_after`` seconds, when the server said)
        │   └── ContextOverflow        400 (413, 500): the request did not fit the context window
        │                              (``window``, ``prompt_tokens``, when the server said)
        ├── MessageTooLarge            a message that cannot fit the context window even alone: not sent
        └── StreamError                the stream broke: cut short, malformed chunk, error inside the stream

    Terminated (a BaseException, like KeyboardInterrupt)   SIGTERM or SIGHUP: stop, keep what was said, leave

Each error's ``exit_code`` is an ExitStatus.
"""

from __future__ import annotations

from enum import IntEnum


class ExitStatus(IntEnum):
    """chatcli's exit statuses (README, "Commands")."""

    OK = 0
    ERROR = 1  # a backend, store or session error: one line on stderr
    USAGE = 2  # a usage or configuration error
    INTERNAL = 70  # a bug (rerun with CHATCLI_DEBUG=1 for the traceback)
    TIMEOUT = 124  # `chatcli ask`: the reply timed out (what arrived is printed and saved)
    HANGUP = 129  # 128 + SIGHUP: the terminal closed
    INTERRUPTED = 130  # 128 + SIGINT: Ctrl-C
    TERMINATED = 143  # 128 + SIGTERM


class ChatcliError(Exception):
    """Base of every error chatcli reports to the user; ``str(e)`` is the message."""

    exit_code = ExitStatus.ERROR


class ConfigError(ChatcliError):
    """A bad flag, environment variable or config file value; the message names it. Exit status 2."""

    exit_code = ExitStatus.USAGE


class NothingToDo(ChatcliError):
    """A command that had nothing to act on (``undo`` with no turn, ``retry`` with no reply, ...)."""


class CommandError(ChatcliError):
    """``/word`` that is no REPL command, or a command given arguments it does not take."""


class AttachmentError(ChatcliError):
    """A file that cannot go into a message; nothing was sent. A usage error, like a missing file named
    to any command-line tool."""

    exit_code = ExitStatus.USAGE


class SizeLimitError(ChatcliError):
    """A message (or a system prompt) larger than chatcli keeps of one message on every store
    (``chatcli.messages.MAX_MESSAGE_BYTES``); refused before anything was written or sent. A usage error."""

    exit_code = ExitStatus.USAGE


class ImportFileError(ChatcliError):
    """An import file of the wrong shape; the message says what is wrong and where."""


class ExportError(ChatcliError):
    """An export file that cannot be written; nothing is overwritten."""


class SessionError(ChatcliError):
    """A session that cannot be used as asked (see the subclasses)."""


class InvalidSessionId(SessionError):
    """An id that could never name a file (``/``, ``..``, NUL, too long); nothing was touched. Exit
    status 2."""

    exit_code = ExitStatus.USAGE


class SessionNotFound(SessionError):
    """No session matches the id, id prefix or title given."""


class AmbiguousSessionId(SessionError):
    """An id prefix or title that matches more than one session."""


class SessionExists(SessionError):
    """A session with that id is already in the store (import, restore, migrate): nothing overwritten."""


class SessionLocked(SessionError):
    """The session's writer lock cannot be taken: another chatcli (or this one) has the session open, or
    the lock file cannot be used."""


class SnapshotError(SessionError):
    """A snapshot that cannot be loaded; ``path`` names the file."""

    def __init__(self, message: str, path: object = None) -> None:
        super().__init__(message)
        self.path = path


class SaveError(SessionError):
    """Writing a snapshot failed; the previous snapshot on disk is intact. ``path`` names the file."""

    def __init__(self, message: str, path: object = None) -> None:
        super().__init__(message)
        self.path = path


class StoreError(ChatcliError):
    """A store that cannot be used as asked. The message names the store (its password masked)."""


class StoreUnavailable(StoreError):
    """The database did not answer (connection refused or lost, a timeout): nothing was written there."""


class StoreConflict(StoreError):
    """A save found that the session changed in the store since this writer last read it (another machine
    wrote it): nothing was overwritten."""


class BackendError(ChatcliError):
    """The model server could not give a reply (or answered in a shape chatcli cannot read). The only
    kind of error a backend raises (``chatcli.backends.base``)."""


class BackendUnavailable(BackendError):
    """The server cannot be reached (connection refused, unknown host), or the embedded model is not
    installed or failed to start."""


class BackendTimeout(BackendError):
    """A deadline passed. ``kind`` is ``"connect"``, ``"idle"`` (no data for that long) or ``"total"``;
    ``seconds`` is the limit that was exceeded."""

    def __init__(self, message: str, kind: str, seconds: float) -> None:
        super().__init__(message)
        self.kind = kind
        self.seconds = seconds


class BackendHTTPError(BackendError):
    """The server answered with an HTTP error. ``status`` is the code, ``server_message`` its own words."""

    def __init__(self, message: str, status: int, server_message: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.server_message = server_message


class AuthenticationError(BackendHTTPError):
    """HTTP 401 or 403: the API key is missing or refused."""


class ModelNotFound(BackendHTTPError):
    """HTTP 404: an unknown model, or a base URL that is not the API's."""


class RateLimited(BackendHTTPError):
    """429. ``retry_after`` is the server's Retry-After in seconds, or None when it gave none."""

    def __init__(
        self, message: str, status: int, server_message: str = "", retry_after: float | None = None
    ) -> None:
        super().__init__(message, status, server_message)
        self.retry_after = retry_after


class ContextOverflow(BackendHTTPError):
    """The server refused a request longer than its context window (llama.cpp ``exceed_context_size_error``,
    OpenAI ``context_length_exceeded``, Ollama's "exceeds the available context size"). ``window``: the
    context window in tokens, ``prompt_tokens``: the size of the refused request, each None when the server
    did not say."""

    def __init__(
        self,
        message: str,
        status: int,
        server_message: str = "",
        window: int | None = None,
        prompt_tokens: int | None = None,
    ) -> None:
        super().__init__(message, status, server_message)
        self.window = window
        self.prompt_tokens = prompt_tokens


class MessageTooLarge(BackendError):
    """The newest message cannot fit the model's context window even alone (with the system prompt and the
    room kept for the reply). It stays in the session, marked as not sent. ``tokens``: its size as
    counted, ``room``: what the window leaves for it (tokens)."""

    def __init__(self, message: str, tokens: int, room: int) -> None:
        super().__init__(message)
        self.tokens = tokens
        self.room = room


class StreamError(BackendError):
    """The reply's stream broke: cut short, a malformed chunk or line, an error sent inside the stream, or
    an answer that is not the protocol's (not an event stream, no model list)."""


class SessionTimeoutError(ChatcliError):
    """A turn timed out. The partial reply (``partial``, possibly empty) was saved with status
    ``timeout``; the conversation can go on. ``cause`` is the BackendTimeout."""

    def __init__(self, message: str, partial: str = "", cause: BackendTimeout | None = None) -> None:
        super().__init__(message)
        self.partial = partial
        self.cause = cause


class Terminated(BaseException):
    """SIGTERM or SIGHUP (the terminal closed) arrived while the REPL ran. Raised in the main thread by the
    handler the CLI installs; a reply streaming at that moment is saved as ``interrupted`` and chatcli leaves
    with exit code 128 + ``signum``. Not a ChatcliError: like KeyboardInterrupt it must pass ``except
    Exception``."""

    def __init__(self, signum: int) -> None:
        import signal

        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum
