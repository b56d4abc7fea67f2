"""Search gives the same hits on every engine, in every script: the same sessions in a folder, SQLite,
PostgreSQL and MariaDB, a hundred queries in ten scripts (and the punctuation that used to cut words
differently), each engine's hit set compared with the others and with the definition itself (chatcli.search:
a message matches when every word of the query starts one of its words)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from chatcli.search import search_words, words
from chatcli.stores import open_store, parse_store
from transcript import CLI

from engines import ENGINES
from torturelib import figure

#: (script, messages): each message one session's user turn; the reply repeats a part of it
CORPUS: list[tuple[str, list[str]]] = [
    (
        "latin",
        ["Élan vital and the café's crème brûlée", "naïve résumé for the façade", "Straße und STRASSE"],
    ),
    ("greek", ["Άλφα και ΩΜΕΓΑ στο σπίτι", "Σίσυφος και ο βράχος", "ελληνικά γράμματα"]),
    ("cyrillic", ["Привет, мир! Ёлка", "Достопримечательность Москвы", "ещё одна строка"]),
    ("arabic", ["مَرْحَبًا بالعالم", "اللغة العربية جميلة", "كتاب جديد"]),
    ("hebrew", ["שָׁלוֹם עולם", "ספר חדש", "ירושלים"]),
    ("hindi", ["हिंदी भाषा सुंदर है", "नमस्ते दुनिया", "किताब पढ़ो"]),
    ("thai", ["ภาษาไทยสวยงาม", "สวัสดีครับ", "กรุงเทพมหานคร"]),
    ("chinese", ["东京和北京都是城市", "我喜欢学习中文", "今天天气很好"]),
    ("japanese", ["東京都に行きます", "がぎぐげご ｶﾞｷﾞ", "ひらがなとカタカナ"]),
    ("korean", ["안녕하세요 세계", "한국어를 배웁니다", "서울은 큰 도시입니다"]),
    (
        "symbols",
        [
            "foo_bar and baz_qux",
            "see x.y and http://example.com/a?b=c",
            "ﬁle Ａｂｃ ＡＢＣ full",
            "C++ #tag e-mail",
        ],
    ),
]

QUERIES: dict[str, list[str]] = {
    "latin": [
        "elan",
        "ÉLAN",
        "cafe",
        "creme brulee",
        "naive",
        "resume",
        "facade",
        "strasse",
        "straße",
        "STR",
    ],
    "greek": ["αλφα", "ΑΛΦΑ", "ωμεγα", "σισυφος", "ΣΊΣΥΦΟΣ", "βραχ", "ελλην", "γραμματα", "σπιτι", "και"],
    "cyrillic": ["привет", "ПРИВЕТ", "мир", "ёлка", "елка", "достоприм", "москвы", "еще", "строка", "одна"],
    "arabic": ["مرحبا", "مَرْحَبًا", "بالعالم", "اللغة", "العربية", "جميلة", "كتاب", "جديد", "بال", "ال"],
    "hebrew": ["שלום", "שָׁלוֹם", "עולם", "ספר", "חדש", "ירושלים", "ירו", "של", "ש", "עול"],
    "hindi": ["हिंदी", "भाषा", "सुंदर", "है", "नमस्ते", "दुनिया", "किताब", "पढ़ो", "हिं", "नम"],
    "thai": ["ภาษาไทย", "ไทย", "สวยงาม", "สวัสดี", "ครับ", "กรุงเทพ", "มหานคร", "ภาษา", "งาม", "เทพ"],
    "chinese": ["东京", "北京", "城市", "中文", "学习", "天气", "今天", "京", "喜欢", "很好"],
    "japanese": ["東京", "東京都", "行き", "がぎ", "ぐげご", "ガギ", "ｶﾞｷﾞ", "ひらがな", "カタカナ", "京都"],
    "korean": ["안녕", "안녕하세요", "세계", "한국어를", "배웁", "서울은", "도시", "큰", "한국", "세"],
    "symbols": ["bar", "foo_bar", "qux", "x.y", "y", "http", "example.com", "file", "abc", "mail"],
}


def _corpus() -> list[dict[str, Any]]:
    out, n = [], 0
    for _, texts in CORPUS:
        for text in texts:
            n += 1
            sid = f"20260101-0000{n:02d}-srch"
            reply = " ".join(text.split()[-2:])
            messages = [
                {"role": "user", "content": text, "status": "ok"},
                {"role": "assistant", "content": f"About {reply}", "status": "ok"},
            ]
            out.append(
                {
                    "format": "chatcli.session",
                    "version": 1,
                    "id": sid,
                    "title": f"Session {n}: {text.split()[0]}",
                    "created_at": "2026-01-01T00:00:00.000Z",
                    "updated_at": "2026-01-01T00:00:00.000Z",
                    "backend": "openai",
                    "model": "m",
                    "params": {},
                    "system": "",
                    "context_start": 0,
                    "messages": messages,
                }
            )
    return out


def _expected(sessions: list[dict[str, Any]], query: str) -> set[tuple[str, str, int]]:
    """The definition's hits: every query word starts a word of the text."""
    wanted = search_words(query)
    hits = set()
    for s in sessions:
        texts = [("title", -1, s["title"])] + [
            (m["role"], i, m["content"]) for i, m in enumerate(s["messages"])
        ]
        for role, position, text in texts:
            found = list(words(text))
            if wanted and all(any(w.startswith(q) for w in found) for q in wanted):
                hits.add((s["id"], role, position))
    return hits


def test_every_engine_finds_the_same_hits_in_every_script(
    cli: CLI, store_for: Callable[[str], str], tmp_path: Path
) -> None:
    sessions = _corpus()
    source = tmp_path / "corpus"
    source.mkdir()
    for s in sessions:
        (source / f"{s['id']}.json").write_bytes(orjson.dumps(s))
    stores = {engine: store_for(engine) for engine in ENGINES}
    for store in stores.values():
        assert cli("migrate", "--from", str(source), "--to", store).exit_code == 0
    opened = {engine: open_store(parse_store(store), timeout=10) for engine, store in stores.items()}
    differing, found_queries, total = [], 0, 0
    try:
        for script, queries in QUERIES.items():
            for query in queries:
                total += 1
                expected = _expected(sessions, query)
                assert expected, (script, query)  # every query here finds something
                found_queries += 1
                for engine, st in opened.items():
                    got = {(h.session_id, h.role, h.position) for h in st.search(query, limit=1000)}
                    if got != expected:
                        differing.append((engine, script, query, sorted(got ^ expected)))
    finally:
        for st in opened.values():
            st.close()
    assert not differing, differing[:10]
    assert total == 110
    figure("search", "queries, scripts, engines", f"{total} queries in {len(QUERIES)} scripts on 4 engines")
    figure("search", "hit sets that differ between engines or from the definition", 0)
