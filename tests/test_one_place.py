"""The conversation is defined once (chatcli/model.py): a copy of chatcli with one more header field, added
in that one place and nowhere else, keeps it as a typed field through every engine, ``migrate`` (folder ->
sqlite -> postgresql -> mysql -> folder), ``export --format json`` and ``import``, and refuses a value of
the wrong type, as it does for every field."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import chatcli

ANCHOR = "    context_window: int | None = field(default=None, metadata=_meta(json=int, required=False, column=None))\n"
NEW_FIELD = (
    "    reasoning_effort: str | None = field(default=None, metadata=_meta(required=False, column=None))\n"
)

SCRIPT = textwrap.dedent(
    """
    import itertools, json, subprocess, sys
    from pathlib import Path
    from chatcli.errors import SnapshotError
    from chatcli.library import migrate
    from chatcli.model import Conversation, Header, Message
    from chatcli.stores import open_store, parse_store

    specs, out = sys.argv[1:-1], Path(sys.argv[-1])
    header = Header(id="20260101-090000-onep", title="one place", created_at="2026-01-01T09:00:00.000Z",
                    updated_at="2026-01-01T09:00:00.000Z", backend="openai", model="m",
                    reasoning_effort="high")
    conv = Conversation(header, [Message("user", "hi", created_at="2026-01-01T09:00:00.000Z")])
    assert conv.to_json()["reasoning_effort"] == "high"
    try:
        Conversation.from_json(dict(conv.to_json(), reasoning_effort=5))
        raise SystemExit("a wrong type was taken")
    except SnapshotError as e:
        assert "reasoning_effort" in str(e)

    def opened(spec):
        return open_store(parse_store(spec), timeout=10)

    first = opened(specs[0])
    lock = first.lock(header.id)
    first.create(conv)
    lock.release()
    first.close()
    for a, b in itertools.pairwise(specs):
        src, dst = opened(a), opened(b)
        assert migrate(src, dst).copied == [header.id], (a, b)
        back = dst.load(header.id)
        assert back.header.reasoning_effort == "high" and "reasoning_effort" not in back.header.extra, b
        assert back.to_json() == conv.to_json(), b
        src.close()
        dst.close()
    cli = [sys.executable, "-m", "chatcli"]
    subprocess.run([*cli, "export", header.id, "--format", "snapshot", "--store", specs[-1], "--output", str(out)],
                   check=True)
    assert json.loads(out.read_text())["reasoning_effort"] == "high"
    for spec in specs[1:4]:  # imported next to the migrated copy, under a new id
        subprocess.run([*cli, "import", str(out), "--store", spec], check=True, capture_output=True)
        st = opened(spec)
        got = [st.load(sid) for sid in st.ids() if sid != header.id]
        assert [c.header.reasoning_effort for c in got] == ["high"], spec
        st.close()
    print("round trip ok")
    """
)


def test_a_header_field_added_in_one_place_goes_everywhere(
    tmp_path: Path, store_for: Any, child_env: dict[str, str]
) -> None:
    copy = tmp_path / "patched"
    shutil.copytree(
        Path(chatcli.__file__).parent, copy / "chatcli", ignore=shutil.ignore_patterns("__pycache__")
    )
    model = copy / "chatcli" / "model.py"
    source = model.read_text()
    assert source.count(ANCHOR) == 1
    model.write_text(source.replace(ANCHOR, ANCHOR + NEW_FIELD))
    (tmp_path / "db").mkdir()
    specs = [
        store_for("folder"),
        f"sqlite:///{tmp_path / 'db' / 'chats.db'}",
        store_for("postgresql"),
        store_for("mysql"),
        str(tmp_path / "back"),
    ]
    env = dict(child_env, PYTHONPATH=str(copy) + os.pathsep + child_env.get("PYTHONPATH", ""))
    r = subprocess.run(
        [sys.executable, "-c", SCRIPT, *specs, str(tmp_path / "out.json")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=tmp_path,
    )
    assert r.returncode == 0 and "round trip ok" in r.stdout, r.stdout + r.stderr
