"""Chat-completion load as the fault tests drive it: each query with its own
`client_request_id`, streaming or not, its outcome as the client saw it (acknowledged, a
5xx, a stream's error event, or the connection dropped without an answer) and the tokens
it was told it used and counted (one logprobs entry per token)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import httpx

ACKNOWLEDGED = "acknowledged"  # 200 with the answer, or a stream that ended in [DONE]
SERVER_ERROR = "5xx"
ERROR_EVENT = "error event"  # a stream that ended with an error event instead of [DONE]
DROPPED = "dropped"  # no HTTP answer at all (reset, closed), or the client timed out
UNEXPECTED = "unexpected"  # any other status


@dataclass
class Outcome:
    client_request_id: str
    streaming: bool
    started: float
    ended: float = 0.0
    kind: str = DROPPED
    status: int | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0  # what the usage (chunk) said
    counted_tokens: int = 0  # logprobs entries received
    first_token_at: float | None = None  # a stream's first token came then
    error: str | None = None

    @property
    def acknowledged(self) -> bool:
        return self.kind == ACKNOWLEDGED

    @property
    def seconds(self) -> float:
        return self.ended - self.started


def chat_body(client_request_id: str, streaming: bool, max_tokens: int) -> dict[str, object]:
    body: dict[str, object] = {
        "messages": [{"role": "user", "content": "Name three experts, briefly."}],
        "max_tokens": max_tokens,
        "logprobs": True,
        "client_request_id": client_request_id,
    }
    if streaming:
        body.update(stream=True, stream_options={"include_usage": True})
    return body


def query(http: httpx.Client, url: str, outcome: Outcome, max_tokens: int) -> None:
    """Send one query and fill in `outcome` (never raises for what the server does)."""
    body = chat_body(outcome.client_request_id, outcome.streaming, max_tokens)
    try:
        if outcome.streaming:
            _stream(http, url, body, outcome)
        else:
            _complete(http, url, body, outcome)
    except httpx.HTTPError as exc:
        outcome.kind, outcome.error = DROPPED, repr(exc)
    finally:
        outcome.ended = time.monotonic()


def _status(outcome: Outcome, status: int, text: str) -> bool:
    outcome.status = status
    if status == 200:
        return True
    outcome.kind = SERVER_ERROR if status >= 500 else UNEXPECTED
    outcome.error = text[:200]
    return False


def _complete(http: httpx.Client, url: str, body: dict[str, object], outcome: Outcome) -> None:
    response = http.post(url, json=body)
    if not _status(outcome, response.status_code, response.text):
        return
    answer = response.json()
    outcome.prompt_tokens = answer["usage"]["prompt_tokens"]
    outcome.completion_tokens = answer["usage"]["completion_tokens"]
    outcome.counted_tokens = sum(
        len((choice.get("logprobs") or {}).get("content") or []) for choice in answer["choices"]
    )
    outcome.kind = ACKNOWLEDGED


def _stream(http: httpx.Client, url: str, body: dict[str, object], outcome: Outcome) -> None:
    with http.stream("POST", url, json=body) as response:
        if not _status(
            outcome,
            response.status_code,
            response.read().decode() if response.status_code != 200 else "",
        ):
            return
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            data = line.removeprefix("data: ")
            if data == "[DONE]":
                if outcome.kind != ERROR_EVENT:
                    outcome.kind = ACKNOWLEDGED
                continue
            chunk = json.loads(data)
            if "error" in chunk:
                outcome.kind, outcome.error = ERROR_EVENT, str(chunk["error"])[:200]
                continue
            if chunk.get("usage"):
                outcome.prompt_tokens = chunk["usage"]["prompt_tokens"]
                outcome.completion_tokens = chunk["usage"]["completion_tokens"]
            for choice in chunk.get("choices", []):
                outcome.counted_tokens += len((choice.get("logprobs") or {}).get("content") or [])
            if outcome.counted_tokens and outcome.first_token_at is None:
                outcome.first_token_at = time.monotonic()
        if outcome.kind not in (ACKNOWLEDGED, ERROR_EVENT):  # the stream just stopped
            outcome.kind, outcome.error = DROPPED, "the stream ended without [DONE]"
