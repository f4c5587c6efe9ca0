"""A thin typed layer over llama-cpp-python's C API: a model, its vocabulary, a multi-sequence context.

The high-level `Llama` object makes a one-sequence context; batching across
agents needs `n_seq_max` > 1, a `llama_batch` with a sequence id per token and
per-sequence KV operations, so the service talks to the C API through this
module and nothing else does. A `Context` is used by the inference thread
only; a `Model`'s vocabulary (tokenize, pieces) is read-only and may be used
from other threads while the context decodes, as llama.cpp's server does.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llama_cpp as C
from llama_cpp import _logger

from hero.errors import ModelError

_logger.set_verbose(False)  # llama.cpp logs each tensor on load; errors still reach stderr
C.llama_backend_init()


class Model:
    """A GGUF model, memory-mapped; its vocabulary and metadata."""

    def __init__(self, path: Path) -> None:
        with open(path, "rb") as f:
            if f.read(4) != b"GGUF":
                raise ModelError(f"{path} is not a GGUF model file")
        params = C.llama_model_default_params()
        ptr = C.llama_model_load_from_file(str(path).encode(), params)
        if not ptr:
            raise ModelError(f"llama.cpp could not load {path} (unsupported or damaged GGUF)")
        self.path = path
        self.ptr: Any = ptr
        self.vocab: Any = C.llama_model_get_vocab(ptr)
        self.n_vocab = C.llama_vocab_n_tokens(self.vocab)
        self.n_ctx_train = C.llama_model_n_ctx_train(ptr)
        self.bos = C.llama_vocab_bos(self.vocab)
        self.eos = C.llama_vocab_eos(self.vocab)
        self.eot = C.llama_vocab_eot(self.vocab)
        self._pieces: list[bytes | None] = [None] * self.n_vocab
        self._eog = bytearray(self.n_vocab)  # per token: 0 not asked yet, 1 no, 2 yes (one C call a token saved)
        texts = (C.llama_vocab_get_text(self.vocab, t) or b"" for t in range(self.n_vocab))
        self.max_piece_bytes = max(1, max(len(text) for text in texts))  # bounds the bytes one token covers

    def close(self) -> None:
        if self.ptr:
            C.llama_model_free(self.ptr)
            self.ptr = None

    def meta(self, key: str) -> str | None:
        size = C.llama_model_meta_val_str(self.ptr, key.encode(), None, 0)
        if size < 0:
            return None
        buf = ctypes.create_string_buffer(size + 1)
        C.llama_model_meta_val_str(self.ptr, key.encode(), buf, size + 1)
        return buf.value.decode("utf-8", errors="replace")

    def chat_template(self) -> str | None:
        raw = C.llama_model_chat_template(self.ptr, None)
        return raw.decode("utf-8", errors="replace") if raw else None

    def token_text(self, token: int) -> str:
        """The token as written in the vocabulary (special tokens by name, e.g. `<|im_end|>`)."""
        if token < 0:
            return ""
        return (C.llama_vocab_get_text(self.vocab, token) or b"").decode("utf-8", errors="replace")

    def tokenize(self, text: str, *, special: bool, add_bos: bool = False) -> list[int]:
        data = text.encode("utf-8", errors="replace")
        n_max = len(data) + 8
        buf = (C.llama_token * n_max)()
        n = C.llama_tokenize(self.vocab, data, len(data), buf, n_max, add_bos, special)
        if n < 0:  # cannot happen with one slot per byte, but llama.cpp reports the size needed
            buf = (C.llama_token * -n)()
            n = C.llama_tokenize(self.vocab, data, len(data), buf, -n, add_bos, special)
        return list(buf[:n])

    def piece(self, token: int) -> bytes:
        """The bytes a token adds to the text (control tokens add none); cached per token."""
        cached = self._pieces[token]
        if cached is None:
            buf = ctypes.create_string_buffer(64)
            n = C.llama_token_to_piece(self.vocab, token, buf, 64, 0, False)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = C.llama_token_to_piece(self.vocab, token, buf, -n, 0, False)
            cached = self._pieces[token] = buf.raw[:n]
        return cached

    def detokenize(self, tokens: Sequence[int]) -> str:
        return b"".join(self.piece(t) for t in tokens).decode("utf-8", errors="ignore")

    def is_eog(self, token: int) -> bool:
        known = self._eog[token]
        if not known:
            known = self._eog[token] = 2 if C.llama_vocab_is_eog(self.vocab, token) else 1
        return known == 2


@dataclass
class Entry:
    """One token of a batch: which sequence, at which position, and whether its logits are wanted."""

    token: int
    pos: int
    seq: int
    logits: bool


class Context:
    """A llama.cpp context with `n_seq` sequences, each with its own `n_ctx_seq` KV cells.

    The cells are not unified: each sequence attends over its own cells only,
    which is what independent conversations want (llama.h advises it when
    sequences share no large prefix); the KV buffer is still one allocation.
    """

    def __init__(self, model: Model, *, n_ctx_seq: int, n_seq: int, n_batch: int, threads: int) -> None:
        params = C.llama_context_default_params()
        params.n_ctx = n_ctx_seq * n_seq
        params.n_batch = params.n_ubatch = n_batch
        params.n_seq_max = n_seq
        params.n_threads = params.n_threads_batch = threads
        params.kv_unified = False
        params.no_perf = True
        ptr = C.llama_init_from_model(model.ptr, params)
        if not ptr:
            raise ModelError(f"llama.cpp could not create a context of {n_seq} × {n_ctx_seq} tokens")
        self.ptr: Any = ptr
        self.model = model
        self.n_seq = n_seq
        self.n_ctx_seq = C.llama_n_ctx_seq(ptr)
        self.n_batch = n_batch
        self.threads = threads
        self.memory: Any = C.llama_get_memory(ptr)
        self._batch = C.llama_batch_init(n_batch, 0, 1)

    def close(self) -> None:
        if self.ptr:
            C.llama_batch_free(self._batch)
            C.llama_free(self.ptr)
            self.ptr = None

    def set_threads(self, threads: int) -> None:
        if threads != self.threads:
            C.llama_set_n_threads(self.ptr, threads, threads)
            self.threads = threads

    def decode(self, entries: Sequence[Entry]) -> None:
        """Run one llama_decode over `entries` (at most `n_batch`); logits are then read by entry index."""
        batch = self._batch
        for i, e in enumerate(entries):
            batch.token[i] = e.token
            batch.pos[i] = e.pos
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = e.seq
            batch.logits[i] = e.logits
        batch.n_tokens = len(entries)
        status = C.llama_decode(self.ptr, batch)
        if status != 0:
            raise ModelError(f"llama_decode failed ({status})")

    def keep(self, seq: int, n: int) -> None:
        """Keep the first `n` cells of `seq` (0 clears it)."""
        C.llama_memory_seq_rm(self.memory, seq, n, -1)

    def save(self, seq: int) -> bytes:
        size = C.llama_state_seq_get_size(self.ptr, seq)
        buf = (ctypes.c_uint8 * size)()
        written = C.llama_state_seq_get_data(self.ptr, buf, size, seq)
        return bytes(buf)[:written]

    def restore(self, seq: int, data: bytes) -> bool:
        """Load a saved sequence state into `seq` (cleared first); False if llama.cpp refuses it."""
        self.keep(seq, 0)
        buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
        if C.llama_state_seq_set_data(self.ptr, buf, len(data), seq) == 0:
            self.keep(seq, 0)
            return False
        return True
