"""Files put into a message: the limits hold even when a file changes while it is read."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from chatcli import attachments
from chatcli.attachments import MAX_FILE_BYTES
from chatcli.errors import AttachmentError


def test_a_file_that_grows_after_its_size_was_checked_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "log.txt"
    path.write_bytes(b"x" * (MAX_FILE_BYTES + 10))
    small = os.stat_result((0o100644, 0, 0, 1, 0, 0, 100, 0, 0, 0))  # what stat saw before it grew
    real_stat = Path.stat
    monkeypatch.setattr(Path, "stat", lambda self, **kw: small if self == path else real_stat(self, **kw))
    with pytest.raises(AttachmentError, match=r"log.txt is too large .*over [\d,]+ bytes; the limit is"):
        attachments.read(path)


def test_a_text_file_is_read_whole(tmp_path: Path) -> None:
    path = tmp_path / "notes.md"
    path.write_text("line one\nline two ```\n")
    a = attachments.read(path)
    assert a.text == "line one\nline two ```\n" and a.lines == 2
