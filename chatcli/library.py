"""The session library: rename, trash/restore/purge, prune, export, import and fork, on top of the
snapshot store. The JSON files stay the source of truth; every change goes through ``SessionStore.save``
(atomic) or ``os.replace`` (a move within the folder), and a session open in a REPL is never touched.

The trash is ``<sessions>/.trash/``: deleted snapshots keep their file name there until restored or purged.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson

from chatcli.errors import ChatcliError, ConfigError, SessionNotFound, SnapshotError
from chatcli.render import count
from chatcli.store import FORMAT, SUFFIX, VERSION, SessionStore, new_session_id, utc_now, validate_id, \
    validate_snapshot

TRASH = ".trash"
EXPORT_FORMATS = ("md", "json", "jsonl")


class ImportError_(ChatcliError):
    """An import file of the wrong shape; the message says what is wrong and where."""

    exit_code = 1


def check_title(title: str) -> str:
    """``title`` stripped, or ConfigError if it holds control characters or is too long (200)."""
    if any(not ch.isprintable() for ch in title):
        raise ConfigError("a title cannot hold control characters or line breaks")
    title = title.strip()
    if len(title) > 200:
        raise ConfigError(f"a title can be at most 200 characters (this one has {len(title)})")
    return title


def trash_dir(store: SessionStore) -> Path:
    return store.root / TRASH


def _locked(store: SessionStore, sid: str) -> Any:
    """The session's lock, taken (raises SessionLocked when a REPL has it open)."""
    return store.lock(sid)


def rename(store: SessionStore, sid: str, title: str) -> None:
    """Set a session's title. Raises SessionLocked, SnapshotError, ConfigError."""
    title = check_title(title)
    lock = _locked(store, sid)
    try:
        snap = store.load(sid)
        snap["title"] = title
        snap["updated_at"] = utc_now()
        store.save(snap)
    finally:
        lock.release()


def delete(store: SessionStore, sid: str) -> Path:
    """Move a session to the trash; returns its new path. Raises SessionLocked."""
    lock = _locked(store, sid)
    try:
        src = store.path_for(sid)
        dst_dir = trash_dir(store)
        dst_dir.mkdir(mode=0o700, exist_ok=True)
        dst = dst_dir / src.name
        os.replace(src, dst)
        return dst
    finally:
        lock.release()
        _remove_quietly(store.root / f".{sid}.lock")


def purge(store: SessionStore, sid: str) -> None:
    """Remove a session for good, from the folder or the trash. Raises SessionNotFound, SessionLocked."""
    src = store.path_for(sid)
    if src.exists():
        lock = _locked(store, sid)
        try:
            src.unlink()
        finally:
            lock.release()
            _remove_quietly(store.root / f".{sid}.lock")
        return
    trashed = trash_dir(store) / (validate_id(sid) + SUFFIX)
    try:
        trashed.unlink()
    except FileNotFoundError:
        raise SessionNotFound(f"no session {sid} in {store.root} or its trash") from None


def trashed_ids(store: SessionStore) -> list[str]:
    return SessionStore(trash_dir(store)).ids()


def resolve_trashed(store: SessionStore, ref: str) -> str:
    """An id in the trash from a full id or unique prefix (as ``SessionStore.resolve``)."""
    try:
        return SessionStore(trash_dir(store)).resolve(ref)
    except SessionNotFound:
        raise SessionNotFound(f"no session {ref!r} in the trash ({trash_dir(store)})") from None


def restore(store: SessionStore, sid: str) -> Path:
    """Move a session back from the trash. Refuses to overwrite a session with the same id."""
    src = trash_dir(store) / (validate_id(sid) + SUFFIX)
    dst = store.path_for(sid)
    if not src.exists():
        raise SessionNotFound(f"no session {sid} in the trash ({trash_dir(store)})")
    if dst.exists():
        raise ChatcliError(f"a session {sid} already exists in {store.root}; nothing was restored")
    os.link(src, dst)  # fails if dst appeared meanwhile: never overwrites
    src.unlink()
    return dst


def parse_age(text: str) -> timedelta:
    """``30d``, ``12h``, ``90m``, ``2w`` as a timedelta; ConfigError otherwise."""
    units = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
    t = text.strip().lower()
    if len(t) >= 2 and t[-1] in units and t[:-1].isdigit():
        return timedelta(**{units[t[-1]]: int(t[:-1])})
    raise ConfigError(f"{text!r} is not an age: use a number and a unit, e.g. 30d, 12h, 2w, 90m")


def parse_date(text: str) -> str:
    """A date or time the user typed (``2026-11-01``, ``2026-11-01T10:00``, or an age like ``7d``) as a
    UTC ISO 8601 string for comparisons. ConfigError otherwise."""
    t = text.strip()
    try:
        return (datetime.now(timezone.utc) - parse_age(t)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    except ConfigError:
        pass
    try:
        when = datetime.fromisoformat(t.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"{text!r} is not a date: use YYYY-MM-DD, YYYY-MM-DDTHH:MM or an age like 7d") from None
    if when.tzinfo is None:
        when = when.astimezone()  # a date typed by a person is in their local time
    return when.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# -- export ----------------------------------------------------------------------------------------------
def export(snap: dict[str, Any], fmt: str) -> bytes:
    """A snapshot as ``md`` (a readable transcript), ``json`` (the snapshot itself) or ``jsonl`` (one
    message per line, OpenAI-style ``role``/``content`` plus chatcli's fields; the system prompt first)."""
    if fmt == "json":
        return orjson.dumps(snap, option=orjson.OPT_INDENT_2) + b"\n"
    if fmt == "jsonl":
        lines = []
        if snap["system"]:
            lines.append(orjson.dumps({"role": "system", "content": snap["system"]}))
        lines += [orjson.dumps(m) for m in snap["messages"]]
        return b"\n".join(lines) + (b"\n" if lines else b"")
    if fmt == "md":
        return transcript_markdown(snap).encode()
    raise ConfigError(f"unknown export format {fmt!r}: choose one of {', '.join(EXPORT_FORMATS)}")


def transcript_markdown(snap: dict[str, Any]) -> str:
    """The session as Markdown: a heading, its settings, then each message under a role heading with its
    status when it is not ``ok``."""
    out = [f"# {snap['title'] or '(untitled)'}", "",
           f"- session: `{snap['id']}`", f"- backend/model: {snap['backend']}/{snap['model']}",
           f"- created: {snap['created_at']}, updated: {snap['updated_at']}", ""]
    if snap["system"]:
        out += ["## System", "", snap["system"], ""]
    changes: dict[int, list[dict[str, Any]]] = {}
    for c in snap.get("changes", []):
        if isinstance(c, dict) and isinstance(c.get("at"), int):
            changes.setdefault(c["at"], []).append(c)
    cuts = {c for c in snap.get("clears", []) if isinstance(c, int)} | {snap.get("context_start", 0)}
    turn = 0
    messages = snap["messages"]
    for i in range(len(messages) + 1):
        if i in cuts and 0 < i < len(messages):
            out += ["---", "", "*(context cleared here)*", ""]
        for c in changes.get(i, []):
            what, new = str(c.get("what", "")), str(c.get("to", ""))
            shown = f"`{new}`" if what == "model" else repr(new) if new else "(none)"
            out += [f"*({what} changed to {shown})*", ""]
        if i == len(messages):
            break
        m = messages[i]
        dropped = m.get("dropped")
        if m["role"] == "user":
            if dropped is None:
                turn += 1
            head = f"## You (turn {turn})" if dropped is None else "## You"
        else:
            head = "## Model"
        status = m.get("status", "ok")
        if status != "ok":
            status = "interrupted" if status == "streaming" else status
            head += f" — *{status}*"
        if dropped == "retried":
            head += " — *replaced by a retry*"
        elif dropped == "undone":
            head += " — *undone*"
        out += [head, "", m["content"] or "*(no text)*", ""]
        if m.get("error"):
            out += [f"> error: {m['error']}", ""]
    return "\n".join(out)


def export_to_folder(snap: dict[str, Any], fmt: str, folder: Path) -> Path:
    """Write ``export(snap, fmt)`` to ``folder/chatcli-<id>.<fmt>`` (``-2``, ``-3``... when taken; never
    overwrites). Returns the path. Raises ConfigError (format), ChatcliError (cannot write)."""
    data = export(snap, fmt)
    for n in range(1, 1000):
        path = folder / (f"chatcli-{snap['id']}" + (f"-{n}" if n > 1 else "") + f".{fmt}")
        try:
            with open(path, "xb") as f:
                f.write(data)
            return path
        except FileExistsError:
            continue
        except OSError as e:
            raise ChatcliError(f"cannot write {path}: {e.strerror}") from None
    raise ChatcliError(f"too many exports of {snap['id']} in {folder}")


# -- import ----------------------------------------------------------------------------------------------
def import_file(store: SessionStore, path: Path) -> tuple[str, str]:
    """Import a chatcli snapshot, an OpenAI-style ``{"messages": [...]}`` or a plain list of messages as a
    new session. Returns (new id, what it was). Never overwrites: a snapshot whose id exists gets a new id.
    Raises ImportError_ naming the file and what is wrong."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ImportError_(f"cannot read {path}: {e.strerror}") from None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        data = _try_jsonl(raw, path)
    if isinstance(data, dict) and data.get("format") == FORMAT:
        try:
            snap = validate_snapshot(data, path)
        except SnapshotError as e:
            raise ImportError_(str(e)) from None
        kind = "chatcli session"
        if store.path_for(snap["id"]).exists() if _valid_id(snap["id"]) else True:
            snap["id"] = new_session_id()
    else:
        if isinstance(data, dict) and isinstance(data.get("messages"), list):
            messages, kind = data["messages"], "OpenAI-style messages"
        elif isinstance(data, list):
            messages, kind = data, "list of messages"
        else:
            raise ImportError_(f"{path} is neither a chatcli session, an object with a \"messages\" list, "
                               f"nor a list of messages")
        snap = _snapshot_from_messages(messages, path, data if isinstance(data, dict) else {})
    snap["updated_at"] = utc_now()
    lock = store.lock(snap["id"])
    try:
        if store.path_for(snap["id"]).exists():
            raise ImportError_(f"session {snap['id']} already exists; nothing was imported")
        store.save(snap)
    finally:
        lock.release()
    return snap["id"], kind


def _valid_id(sid: Any) -> bool:
    try:
        validate_id(sid)
        return True
    except ChatcliError:
        return False


def _try_jsonl(raw: bytes, path: Path) -> Any:
    rows = []
    for n, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            raise ImportError_(f"{path} is not JSON (nor JSON Lines: line {n} is not valid JSON)") from None
    if not rows:
        raise ImportError_(f"{path} is empty")
    return rows


def _snapshot_from_messages(messages: list[Any], path: Path, extra: dict[str, Any]) -> dict[str, Any]:
    system_parts: list[str] = []
    out: list[dict[str, Any]] = []
    now = utc_now()
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ImportError_(f"{path}: message {i} is not an object")
        role, content = m.get("role"), m.get("content")
        if isinstance(content, list):  # OpenAI content parts: keep the text parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
        if role not in ("system", "user", "assistant") or not isinstance(content, str):
            raise ImportError_(f"{path}: message {i} needs a role (system, user or assistant) and text content")
        if role == "system":
            system_parts.append(content)
            continue
        out.append({"role": role, "content": content, "created_at": now, "status": "ok"})
    if not out:
        raise ImportError_(f"{path} holds no user or assistant messages")
    title = extra.get("title") if isinstance(extra.get("title"), str) else ""
    first_user = next((m["content"] for m in out if m["role"] == "user"), "")
    from chatcli.session import _title_from

    model = extra.get("model") if isinstance(extra.get("model"), str) else "imported"
    return {"format": FORMAT, "version": VERSION, "id": new_session_id(), "title": title or _title_from(first_user),
            "created_at": now, "updated_at": now, "backend": "openai", "model": model, "base_url": "",
            "params": {}, "system": "\n\n".join(system_parts), "context_start": 0, "messages": out}


# -- fork ------------------------------------------------------------------------------------------------
def fork(store: SessionStore, snap: dict[str, Any], at_turn: int | None = None) -> str:
    """A new session holding the first ``at_turn`` turns of ``snap`` (all when None); returns its id."""
    messages = snap["messages"]
    cut = len(messages)
    if at_turn is not None:
        if at_turn < 0:
            raise ConfigError("--at must be 0 or more turns")
        turn = 0
        for i, m in enumerate(messages):
            if m["role"] == "user" and m.get("dropped") is None:
                turn += 1
                if turn > at_turn:
                    cut = i
                    break
        if turn < at_turn:
            raise ConfigError(f"session {snap['id']} has only {count(turn, 'turn')}; --at {at_turn} is past its end")
    new = dict(snap)
    changes = [c for c in snap.get("changes", []) if isinstance(c, dict) and isinstance(c.get("at"), int)]
    for c in reversed(changes):  # settings as they were at the cut: undo the changes made after it
        if c["at"] > cut and c.get("what") in ("model", "system") and isinstance(c.get("from"), str):
            new[c["what"]] = c["from"]
    now = utc_now()
    new.update(id=new_session_id(), created_at=now, updated_at=now, messages=[dict(m) for m in messages[:cut]],
               context_start=min(snap["context_start"], cut), forked_from=snap["id"],
               title=(snap["title"] + " (fork)") if snap["title"] else "")
    new["changes"] = [c for c in changes if c["at"] <= cut]
    if not new["changes"]:
        del new["changes"]
    new["clears"] = [c for c in snap.get("clears", []) if isinstance(c, int) and c <= new["context_start"]]
    if not new["clears"]:
        del new["clears"]
    lock = store.lock(new["id"])
    try:
        store.save(new)
    finally:
        lock.release()
    return new["id"]


def _remove_quietly(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def older_than(store: SessionStore, age: timedelta) -> list[str]:
    """Ids of sessions last updated more than ``age`` ago (damaged files are left alone)."""
    cutoff = (datetime.now(timezone.utc) - age).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    from chatcli.index import SessionIndex

    ix = SessionIndex(store)
    try:
        rows, _ = ix.summaries()
    finally:
        ix.close()
    return [r.id for r in rows if r.updated_at < cutoff]
