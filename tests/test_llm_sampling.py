"""Per-sequence sampling reaches llama.cpp; sampled tokens become readable text (stops, word-boundary cuts)."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from hero.scheduler.llm import LLMService
from hero.scheduler.sampling import Sampling
from hero.scheduler.text import CUT_MARK, ReplyText

STOP = "<|im_end|>"


def feed(pieces: list[bytes], *, near_end_from: int | None = None, cut: bool = False) -> tuple[str, bool]:
    text = ReplyText([STOP])
    out = []
    stopped = False
    for i, piece in enumerate(pieces):
        delta, stopped = text.add(piece, near_end=near_end_from is not None and i >= near_end_from)
        out.append(delta)
        if stopped:
            break
    out.append(text.finish(cut=cut and not stopped))
    assert "".join(out) == text.text
    return text.text, stopped


def test_a_stop_string_split_across_tokens_ends_the_reply_and_is_never_shown():
    text, stopped = feed([b"Hello", b" there", b" <|im", b"_end", b"|>", b" more"])
    assert stopped and text.rstrip() == "Hello there"
    text, stopped = feed([b"a <", b"|not a stop"])  # a false start is shown once known
    assert not stopped and text == "a <|not a stop"


def test_a_reply_cut_by_max_tokens_ends_at_a_word_boundary_and_is_marked():
    text, _ = feed([b"The", b" quick", b" brown", b" fo"], near_end_from=2, cut=True)
    assert text == "The quick brown" + CUT_MARK  # " fo" was unfinished
    text, _ = feed([b"Supercalifragil"], near_end_from=0, cut=True)  # one unfinished word is better than none
    assert text == "Supercalifragil" + CUT_MARK


def test_characters_split_across_tokens_come_out_whole():
    text, _ = feed(["café".encode()[:4], "café".encode()[4:], b" ok"])
    assert text == "café ok"


@given(st.lists(st.text(alphabet="ab <|>_imend", max_size=6), max_size=30))
def test_whatever_the_pieces_the_text_is_their_concatenation_up_to_the_stop(pieces):
    joined = "".join(pieces).lstrip()
    text, stopped = feed([p.encode() for p in pieces])
    if STOP in joined:
        assert stopped and text.rstrip() == joined[: joined.index(STOP)].rstrip()
    else:
        assert not stopped and text.rstrip() == joined.rstrip()


async def test_sampler_settings_reach_llama_cpp(llm: LLMService):
    """At temperature 0 the chain is deterministic, so any change in the output is the penalty's doing."""
    prompt = [{"role": "user", "content": "Repeat after me: la la la la la la la la"}]
    plain = Sampling(temperature=0.0, repeat_penalty=1.0, dry_multiplier=0.0)

    async def reply(sampling: Sampling) -> str:
        return "".join([d async for d in llm.stream("r" * 64, prompt, max_tokens=16, sampling=sampling)])

    free = await reply(plain)
    assert free == await reply(plain)  # deterministic: what follows is the settings' doing
    penalised = await reply(Sampling(temperature=0.0, repeat_penalty=2.0, dry_multiplier=0.0))
    assert penalised != free

    def repeats(text: str) -> int:
        seen = re.findall(r"[\w']+", text.lower())
        return len(seen) - len(set(seen))

    assert repeats(penalised) < repeats(free), (free, penalised)


async def test_a_grammar_holds_every_token_where_the_model_would_write_something_else(llm: LLMService):
    """The model would tell a story; the grammar allows two words. Each token the chain picks is rejected and
    sampled again under the grammar, greedy and at temperature 1 alike."""
    story = [{"role": "user", "content": "Write a long story about a dragon."}]
    for temperature in (0.0, 1.0, 1.0):
        usage: dict[str, object] = {}
        out = "".join([d async for d in llm.stream("g" * 64, story, max_tokens=16, temperature=temperature,
                                                   grammar='root ::= ("yes" | "no") "."', usage=usage)])
        assert out in ("yes.", "no."), out
        assert usage["finish_reason"] == "stop"


async def test_a_grammar_the_reply_already_satisfies_changes_nothing(llm: LLMService):
    """The grammar checks the token the chain chose; the chain (penalties included) still sees every token."""
    prompt = [{"role": "user", "content": "Repeat after me: la la la la la la la la"}]

    async def reply(grammar: str | None) -> str:
        return "".join([d async for d in llm.stream("h" * 64, prompt, max_tokens=24, grammar=grammar)])

    assert await reply(r"root ::= [^\x00]*") == await reply(None)
