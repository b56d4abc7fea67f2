"""chatcli.context: which messages a request holds when the conversation outgrows the context window, as
pure functions over messages (no server: the exact count is a callback)."""

from __future__ import annotations

import pytest

from chatcli.context import (
    MAX_RESERVE,
    REPLY_PRIMING,
    SUMMARY_HEADER,
    candidates,
    estimate,
    plan,
    reserve_for,
)
from chatcli.errors import MessageTooLarge
from chatcli.messages import ContextUsed, Usage
from chatcli.model import Message


def chat(turns: int, chars: int = 300) -> list[Message]:
    """``turns`` user/assistant pairs of about ``chars`` characters each."""
    out: list[Message] = []
    for i in range(turns):
        out.append(Message(role="user", content=f"q{i} " + "x" * chars))
        out.append(Message(role="assistant", content=f"a{i} " + "y" * chars))
    return out


def ask(messages: list[Message], text: str = "the newest question") -> list[Message]:
    return [*messages, Message(role="user", content=text)]


def test_the_estimate_counts_bytes_and_a_per_message_overhead() -> None:
    assert estimate("") == 0
    assert estimate("abc") == 1 + 4
    assert estimate("abcd") == 2 + 4  # rounded up
    assert estimate("日本") == 2 + 4  # 6 bytes of UTF-8
    assert Message(role="user", content="abcd").estimated_tokens() == estimate("abcd")


def test_room_for_the_reply() -> None:
    assert reserve_for(8192, 512) == 512
    assert reserve_for(512, 512) == 256  # at most half the window
    assert reserve_for(8192, None) == 2048  # a quarter of it
    assert reserve_for(200_000, None) == MAX_RESERVE


def test_an_unknown_window_sends_everything_since_the_clear() -> None:
    msgs = ask(chat(30))
    p = plan(msgs, context_start=4, system="be brief", window=None, max_tokens=None)
    assert p.start == 4 and p.indexes == list(range(4, len(msgs))) and p.tokens is None and p.left_out == 0
    assert p.messages[0] == {"role": "system", "content": "be brief"}


def test_a_conversation_that_fits_is_sent_whole() -> None:
    msgs = ask(chat(3))
    p = plan(msgs, context_start=0, system="", window=8192, max_tokens=512)
    assert (p.start, p.left_out, p.window, p.reserve) == (0, 0, 8192, 512)
    assert len(p.messages) == 7 and p.tokens == sum(m.estimated_tokens() for m in msgs) + 3


def test_the_oldest_whole_turns_are_left_out_and_the_newest_always_sent() -> None:
    msgs = ask(chat(20))  # each message ~105 tokens by estimate
    p = plan(msgs, context_start=0, system="sys", window=1000, max_tokens=200)
    assert p.left_out > 0
    assert msgs[p.start].role == "user"  # a window starts with a whole turn
    assert p.indexes[-1] == len(msgs) - 1
    assert p.tokens is not None and p.tokens * 1.15 <= 1000 - 200
    # one more turn would not have fit
    with_one_more = (
        sum(msgs[i].estimated_tokens() for i in range(p.start - 2, len(msgs))) + estimate("sys") + 3
    )
    assert with_one_more * 1.15 > 800
    assert p.left_out == p.start // 2


def test_dropped_messages_are_never_sent() -> None:
    msgs = chat(3)
    msgs[2].dropped, msgs[3].dropped = "undone", "undone"
    msgs[5].dropped = "retried"
    msgs.append(Message(role="user", content="too big", dropped="unsent"))
    msgs = ask(msgs)
    assert candidates(msgs, 0, len(msgs)) == [0, 1, 4, 7]
    assert [
        m["content"] for m in plan(msgs, context_start=0, system="", window=None, max_tokens=None).messages
    ] == [
        msgs[0].content,
        msgs[1].content,
        msgs[4].content,
        "the newest question",
    ]


def test_the_last_reply_usage_calibrates_the_estimate() -> None:
    msgs = chat(6)
    plain = plan(ask(msgs), context_start=0, system="", window=2000, max_tokens=200)
    # the server said the last request was twice the estimate: fewer turns fit now
    estimated = sum(m.estimated_tokens() for m in msgs[:-1]) + 3
    msgs[-1].usage = Usage(prompt_tokens=2 * estimated)
    msgs[-1].context = ContextUsed(start=0)
    scaled = plan(ask(msgs), context_start=0, system="", window=2000, max_tokens=200)
    assert scaled.calibration == pytest.approx(2.0, rel=0.01)
    assert scaled.start > plain.start


def test_an_exact_count_moves_the_window_while_it_does_not_fit() -> None:
    msgs = ask(chat(8))
    counted: list[int] = []

    def count(request: list[dict[str, str]]) -> int:
        counted.append(len(request))
        return sum(len(m["content"]) for m in request) // 2  # a tokenizer far hungrier than the estimate

    p = plan(msgs, context_start=0, system="", window=1300, max_tokens=300, count=count)
    assert p.exact and p.tokens is not None and p.tokens <= 1000
    assert len(counted) >= 2 and counted == sorted(counted, reverse=True)  # each try one turn shorter


def test_a_message_too_large_to_fit_alone_is_refused_with_numbers() -> None:
    msgs = ask(chat(2), "z" * 6000)  # ~2,000 tokens
    with pytest.raises(MessageTooLarge) as info:
        plan(msgs, context_start=0, system="", window=1024, max_tokens=256)
    e = info.value
    assert e.room == 768 - 3 and e.tokens > 2000
    assert "about 2,004 tokens" in str(e) and "it stays in the session, not sent" in str(e)
    with pytest.raises(MessageTooLarge, match="the system prompt"):
        plan(ask(chat(1)), context_start=0, system="s" * 3000, window=1024, max_tokens=256)


def summarised(turns: int, covered: int) -> tuple[list[Message], int]:
    """A conversation whose first ``covered`` turns have a summary (placed after them)."""
    msgs = chat(turns)
    summary = Message(role="system", content="They spoke of many x and y.", summary_of=[0, 2 * covered])
    msgs.insert(2 * covered, summary)
    return ask(msgs), 2 * covered


def test_a_summary_is_sent_in_place_of_the_turns_it_stands_for() -> None:
    msgs, at = summarised(turns=20, covered=15)
    p = plan(msgs, context_start=0, system="be brief", window=1200, max_tokens=200)
    assert p.summary == at and p.start >= at + 1
    head = p.messages[0]["content"]
    assert head.startswith("be brief\n\n" + SUMMARY_HEADER) and "They spoke of many x and y." in head
    assert p.summarised == 15 and p.left_out >= 15
    assert all(m["role"] != "system" for m in p.messages[1:])


def test_a_summary_is_sent_when_everything_fits_but_not_after_a_clear() -> None:
    msgs, at = summarised(turns=3, covered=2)  # (a /compact asked for: its turns would fit)
    p = plan(msgs, context_start=0, system="", window=8192, max_tokens=200)
    assert (p.summary, p.start, p.left_out, p.summarised) == (at, at + 1, 2, 2)
    msgs, at = summarised(turns=20, covered=15)
    assert plan(msgs, context_start=at + 1, system="", window=1200, max_tokens=200).summary is None


def test_after_an_overflow_less_is_sent() -> None:
    msgs = ask(chat(4))
    first = plan(msgs, context_start=0, system="", window=8192, max_tokens=None)
    again = plan(msgs, context_start=0, system="", window=8192, max_tokens=None, min_start=first.start + 1)
    assert again.start == 2 and again.left_out == 1
    newest_only = plan(
        msgs, context_start=0, system="", window=8192, max_tokens=None, min_start=len(msgs) + 5
    )
    assert newest_only.indexes == [len(msgs) - 1]  # whatever the floor, the newest turn goes


def test_when_every_exact_count_is_over_the_newest_turn_goes_alone_with_its_own_size() -> None:
    msgs = ask(chat(8))
    p = plan(msgs, context_start=0, system="", window=1300, max_tokens=300, count=lambda request: 10**6)
    assert p.start == len(msgs) - 1 and not p.exact  # the newest turn alone, as estimated
    assert p.tokens == estimate("the newest question") + REPLY_PRIMING  # not the size of a longer request


def test_a_request_with_no_message_yet_counts_the_system_prompt_and_the_reply_priming() -> None:
    p = plan([], context_start=0, system="Be brief.", window=1000, max_tokens=None)
    assert p.indexes == [] and p.tokens == estimate("Be brief.") + REPLY_PRIMING
