"""Constrained decoding: the glue between the engine and llguidance.

`GrammarBackend` is one per engine. It builds llguidance's index of the engine's vocabulary
once, lazily (0.4 s for cl100k, 1-2 s for a large Hugging Face vocabulary: only engines that
see a constrained request pay it), with `n_vocab` = the model's logits width, so that a
mask row lines up with a logits row even where the model pads its embedding past the
tokenizer's last token (DBRX: 100,352 rows for 100,280 tokens; padding rows are never
allowed). The grammar's end-of-sequence tokens are the tokenizer's stop tokens (and the
model's eos): the grammar allows them only once its output is complete.

Compiling a constraint is the expensive part of a matcher (milliseconds for a schema, up to
a second for a huge grammar), so compiled matchers are kept in a small LRU keyed by the
constraint and each choice gets a `deep_copy` of the pristine one. `check` compiles with
the engine's vocabulary and raises ValueError with the library's reason, so a bad grammar
is refused before anything is queued.

Masks are filled by `submit_masks` on one background thread, while the model runs the step:
llguidance releases the GIL while it computes, and so does torch. The thread runs no torch
kernel (the buffer is a numpy array; the sampler gets a `torch.from_numpy` view of it), so
it never starts a second OpenMP pool (see "Threads" in `workers.engine.async_engine`). The
buffer is reused from step to step; a step's fill is awaited before its sampler reads it
and the single thread runs fills one after another, so no two steps ever share it at once.
The sampler applies the mask with `apply_token_bitmask` (below).
"""

from __future__ import annotations

import enum
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import torch

from workers.engine.constraint import Constraint
from workers.tokenizer import Cl100kTokenizer, HFTokenizer, Tokenizer, cl100k_encoding

if TYPE_CHECKING:
    from llguidance import LLExecutor, LLMatcher, LLTokenizer

log = logging.getLogger(__name__)

# Distinct constraints whose compiled matchers are kept: a service sees few schemas, reused
# by many requests (tool-calling clients send the same tools every turn).
DEFAULT_CACHE_SIZE = 64


class Advance(enum.Enum):
    """What one sampled token did to a choice's grammar."""

    CONTINUE = "continue"  # accepted; the grammar can go on
    COMPLETE = "complete"  # accepted; the grammar can produce nothing more
    REFUSED = "refused"  # outside the grammar (a mask fault); the matcher is now in error


class ChoiceMatcher:
    """One choice's place in its grammar."""

    def __init__(self, inner: LLMatcher) -> None:
        self.inner = inner

    def advance(self, token: int) -> Advance:
        if not self.inner.consume_token(token):
            return Advance.REFUSED
        return Advance.COMPLETE if self.inner.is_stopped() else Advance.CONTINUE

    @property
    def error(self) -> str:
        """The library's explanation once `advance` returned REFUSED ("" before)."""
        return self.inner.get_error()


def mask_words(vocab_size: int) -> int:
    """32-bit words in one mask row (bit t of the row allows token t)."""
    return (vocab_size + 31) // 32


class GrammarBackend:
    def __init__(
        self,
        tokenizer: Tokenizer | None,
        *,
        vocab_size: int,
        eos_token_ids: Iterable[int] = (),
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        """`vocab_size`: the width of the model's logits. The tokens that end a complete
        grammar are the tokenizer's stop tokens and those of `eos_token_ids` (the model's)
        that the tokenizer has."""
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        known = tokenizer.vocab_size if tokenizer is not None else 0
        stops = set(tokenizer.stop_token_ids if tokenizer is not None else ())
        stops |= {t for t in eos_token_ids if 0 <= t < known}  # the model's, if a token
        self.eos_token_ids = frozenset(stops)
        self._cache_size = cache_size
        self._compiled: OrderedDict[Constraint, LLMatcher] = OrderedDict()
        self._lock = threading.Lock()  # the lazy index and the cache (compiles run anywhere)
        self._lltokenizer: LLTokenizer | None = None
        self._executor: LLExecutor | None = None
        self._thread: ThreadPoolExecutor | None = None
        self._buffer: npt.NDArray[np.int32] = np.empty((0, 0), dtype=np.int32)

    @property
    def index_size(self) -> int:
        """Token ids the index covers: the logits width, or the tokenizer's vocabulary when it
        is wider (its extra ids cannot be sampled; the sampler drops their mask bits)."""
        tokenizer_vocab = self.tokenizer.vocab_size if self.tokenizer is not None else 0
        return max(self.vocab_size, tokenizer_vocab)

    # -- compiling ---------------------------------------------------------------------
    def check(self, constraint: Constraint) -> None:
        """Compile `constraint` against the vocabulary (cached); ValueError says why it
        cannot be followed. Changes nothing but the compile cache."""
        self._pristine(constraint)

    def matcher(self, constraint: Constraint) -> ChoiceMatcher:
        """A fresh matcher for one choice (ValueError as `check`)."""
        pristine = self._pristine(constraint)
        with self._lock:  # the copy reads the shared pristine matcher
            return ChoiceMatcher(pristine.deep_copy())

    def _pristine(self, constraint: Constraint) -> LLMatcher:
        with self._lock:
            cached = self._compiled.get(constraint)
            if cached is not None:
                self._compiled.move_to_end(constraint)
                return cached
        compiled = self._compile(constraint)
        with self._lock:
            self._compiled[constraint] = compiled
            while len(self._compiled) > self._cache_size:
                self._compiled.popitem(last=False)
        return compiled

    def _compile(self, constraint: Constraint) -> LLMatcher:
        from llguidance import LLMatcher

        index = self._index()  # first: without a tokenizer, that is the reason to give
        try:
            grammar = constraint.grammar()
        except ValueError as exc:  # the schema is not JSON, or not an object
            raise ValueError(f"the {constraint.kind.value} constraint is invalid: {exc}") from exc
        matcher = LLMatcher(index, grammar, log_level=0)
        if matcher.is_error():
            raise ValueError(
                f"the {constraint.kind.value} constraint does not compile: {matcher.get_error()}"
            )
        return matcher

    def _index(self) -> LLTokenizer:
        """llguidance's view of the vocabulary, built on first use."""
        with self._lock:
            if self._lltokenizer is None:
                self._lltokenizer = self._build_index()
            return self._lltokenizer

    def _build_index(self) -> LLTokenizer:
        import llguidance
        import llguidance.tiktoken

        eos = sorted(self.eos_token_ids)
        tokenizer = self.tokenizer
        if tokenizer is None:
            raise ValueError(
                "this engine has no tokenizer, so it cannot follow a constraint; "
                "serve the model with a tokenizer or drop the constraint"
            )
        if isinstance(tokenizer, Cl100kTokenizer):
            return llguidance.tiktoken.lltokenizer_from_encoding(
                cl100k_encoding(), n_vocab=self.index_size, eos_token=eos
            )
        if isinstance(tokenizer, HFTokenizer):
            return llguidance.LLTokenizer(
                _hf_tokenizer_json(tokenizer), n_vocab=self.index_size, eos_token=eos
            )
        raise ValueError(
            f"constrained decoding does not support {type(tokenizer).__name__} tokenizers"
        )

    # -- masks -------------------------------------------------------------------------
    def submit_masks(
        self, rows: Sequence[tuple[ChoiceMatcher, int]], batch: int
    ) -> Future[torch.Tensor]:
        """Start filling the next-token masks of `rows` (matcher, logits row) on the
        background thread; the future gives the [batch, words] int32 bitmask, every other
        row all-allowed. The matchers must not advance until it is done."""
        if self._thread is None:
            self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="grammar-mask")
        return self._thread.submit(self._fill, list(rows), batch)

    def _fill(self, rows: list[tuple[ChoiceMatcher, int]], batch: int) -> torch.Tensor:
        import llguidance
        import llguidance.numpy

        words = mask_words(self.index_size)
        if self._buffer.shape[0] < batch or self._buffer.shape[1] != words:
            self._buffer = np.full((batch, words), -1, dtype=np.int32)
        bitmask = self._buffer[:batch]  # a prefix of rows: contiguous, as llguidance needs
        constrained = [row for _, row in rows]
        free = np.setdiff1d(np.arange(batch), constrained, assume_unique=True)
        bitmask[free] = -1  # the buffer may hold an earlier step's mask in these rows
        if len(rows) == 1:  # one row: no point handing it to the library's thread pool
            ((matcher, row),) = rows
            llguidance.numpy.fill_next_token_bitmask(matcher.inner, bitmask, row)
        else:
            if self._executor is None:
                self._executor = llguidance.LLExecutor()
            pairs = [(matcher.inner, row) for matcher, row in rows]
            llguidance.numpy.fill_next_token_bitmask_par(self._executor, pairs, bitmask)
        return torch.from_numpy(bitmask)

    def close(self) -> None:
        """Let the mask thread go (a fill in progress finishes first)."""
        if self._thread is not None:
            self._thread.shutdown(wait=False)
            self._thread = None


def apply_token_bitmask(logits: torch.Tensor, bitmask: torch.Tensor) -> None:
    """Set the logits of tokens the bitmask bans to -inf, in place (a CPU fp32 [B, V]).

    Same result as `llguidance.torch.apply_token_bitmask_inplace`, without its
    `torch.compile`: that compiles a C++ kernel on first use (seconds inside a serving step,
    and a compiler needed on every replica) and again for new batch shapes. Here numpy
    unpacks the bits (torch has no unpackbits) and torch's `masked_fill_` writes the rows on
    the step thread's intra-op threads: one pass over the masked rows, which is the cost (a
    16 x 100k batch: ~0.75 ms on a 2-core CPU, as much as the sampler's argmax).

    Rows whose mask allows everything (free requests) are not touched at all. A row whose
    mask allows nothing (a grammar already in error) is left as it is: its token will be
    refused by the matcher, which finishes the choice, instead of sampling from nothing.
    """
    masks = bitmask.numpy()
    rows = np.flatnonzero(~(masks == -1).all(axis=1) & masks.any(axis=1))
    if not len(rows):
        return
    width = logits.shape[1]
    covered = min(width, 32 * masks.shape[1])
    unpacked = np.unpackbits(~masks[rows].view(np.uint8), axis=1, bitorder="little")
    banned = torch.from_numpy(unpacked.view(np.bool_)[:, :covered])
    with torch.inference_mode():  # the executor's logits are inference tensors
        if len(rows) == logits.shape[0]:
            logits[:, :covered].masked_fill_(banned, float("-inf"))
        else:
            for i, row in enumerate(rows.tolist()):
                logits[row, :covered].masked_fill_(banned[i], float("-inf"))
        if width > covered:  # ids past the mask have no token
            logits[torch.from_numpy(rows), covered:] = float("-inf")


def _hf_tokenizer_json(tokenizer: HFTokenizer) -> str:
    """The tokenizer.json text llguidance indexes, without padding or truncation (which
    would change how it tokenizes)."""
    from tokenizers import Tokenizer as RawTokenizer

    raw = RawTokenizer.from_str(tokenizer.tokenizer_json())
    raw.no_padding()
    raw.no_truncation()
    return raw.to_str()
