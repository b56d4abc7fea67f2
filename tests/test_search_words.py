"""The words search indexes (chatcli.search): the fast paths for ASCII text cut the same words, and spell them
for MySQL's FULLTEXT index the same way, as the general definitions, and a message's tsvector keeps
PostgreSQL's limits (256 positions a word, each at most 16,383)."""

from __future__ import annotations

import string

from hypothesis import given
from hypothesis import strategies as st

from chatcli.search import _mysql_spelled, _words, fold, mysql_text, mysql_word, tsvector, words

ASCII = st.text(alphabet=string.printable + "\x00\x7f", max_size=300)


@given(ASCII)
def test_the_ascii_fast_path_cuts_the_words_the_definition_cuts(text: str) -> None:
    assert list(words(text)) == list(_words(fold(text)))


@given(st.one_of(ASCII, st.text(max_size=200)))
def test_the_mysql_spelling_of_a_text_is_its_words_spelled_a_character_at_a_time(text: str) -> None:
    assert mysql_text(text) == "".join(" " + _mysql_spelled(w) for w in words(text))
    assert all(mysql_word(w) == _mysql_spelled(w) for w in [*words(text), text])


def test_q_and_characters_past_ascii_are_spelled_as_defined() -> None:
    assert mysql_text("Quick quiz: 東京 qq") == " zzqquick zzqquiz zzq0lllq0gff zzq0gff zzqqqq"
    assert mysql_word("q-é") == "zzqq-q006n"


def test_a_long_ascii_word_is_capped_as_the_definition_caps_it() -> None:
    text = "short " + "x" * 200 + " end"
    assert list(words(text)) == list(_words(fold(text)))


def test_a_tsvector_keeps_256_positions_a_word_and_none_past_16383() -> None:
    text = " ".join(["echo"] * 300 + ["f"] * 16_100 + ["late", "echo"])
    got = {word: at for word, _, at in (entry.partition(":") for entry in tsvector(text).split(" "))}
    assert got["'echo'"] == ",".join(str(n) for n in range(1, 257))
    assert got["'f'"].split(",")[:2] == ["301", "302"] and len(got["'f'"].split(",")) == 256
    assert got["'late'"] == ""  # past 16,383: the word without a position
