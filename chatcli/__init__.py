"""chatcli: a terminal chat REPL for LLMs whose conversations are never lost."""

__version__ = "0.1.0"
