"""The query API: its HTTP routes, and in `answer` one query from request to usage row.

Routes: `POST /serving-endpoints/{name}/invocations` (the endpoint's task decides the body:
chat, completions or embeddings), the OpenAI-style `POST /serving-endpoints/chat/completions`,
`/completions` and `/embeddings` (the endpoint in the body's `model`; the route must match
the endpoint's task), and `GET /serving-endpoints/models`.

`QueryDoor` (ASGI middleware) sends those POSTs straight to `answer`; the FastAPI routes
below declare them (OpenAPI, docs) and answer the same way if reached. `answer` reads top to
bottom: authenticate (before a byte of the body is read) and resolve the target
(`targets`), read the body (at most `gateway.max_body_bytes`), pick the
candidate entities (`traffic`: the split, then the fallback), parse the body against the
endpoint's task (`requests`), rate limit (`_admit`, the limiter in `ratelimit`), tokenize,
dispatch to a replica (`replicas`), shape the response (`responses`), account
(`accounting`). A large prompt is judged by its length before it is tokenized (past the
context: 400; over the rate limits even at its least possible size: 429), and tokenized off
the event loop. Everything after admission runs inside `Accounting`, which records
exactly one usage row whatever happens; whole answers leave it before they are sent, streams
before their last bytes (`responses.respond`).
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from fastapi import APIRouter, Request, Security
from fastapi.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from control_plane.api.deps import CallerDep, EndpointsDep, bearer
from control_plane.auth import Level, level_of
from control_plane.endpoints.config import ServedEntity
from control_plane.errors import (
    ApiError,
    InvalidParameter,
    RequestLimitExceeded,
    TemporarilyUnavailable,
    error_response,
)
from control_plane.guardrails import Action
from control_plane.ids import to_millis, utcnow
from control_plane.query import responses, traffic
from control_plane.query.accounting import Accounting, Direction
from control_plane.query.budget_admission import hold_budget
from control_plane.query.gateway import Gateway
from control_plane.query.guard_model import GuardModel
from control_plane.query.ratelimit.limiter import (
    RateLimited,
    RateLimiterUnavailable,
    Reservation,
)
from control_plane.query.replicas import EntitiesUnavailable, Slot
from control_plane.query.requests import (
    KIND_FIELD,
    KIND_OF_TASK,
    ChatRequest,
    EmbeddingsRequest,
    GenerationBody,
    JsonObject,
    PromptIds,
    QueryKind,
    QueryRequest,
    parse_request,
)
from control_plane.query.screen import (
    Judge,
    OutputScreen,
    ScreenedInput,
    Screens,
    input_refusal,
    judged_text,
    screen_completion,
    screen_input,
)
from control_plane.query.targets import QueryTarget
from workers.engine.request import Completion, GenerationRequest

PREFIX = "/serving-endpoints"
# The bearer scheme, for the OpenAPI (answer reads the header itself, before the body).
router = APIRouter(prefix=PREFIX, tags=["query"], dependencies=[Security(bearer)])
T = TypeVar("T")
_STREAM: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}}
}
Answer = responses.ChatCompletion | responses.TextCompletion | responses.EmbeddingList


@router.get("/models", response_model=responses.ModelList)
def list_models(endpoints: EndpointsDep, caller: CallerDep) -> responses.ModelList:
    """The endpoints this caller may query, as an OpenAI model list."""
    queryable = [
        e for e in endpoints.listed() if level_of(endpoints.session, e, caller) >= Level.CAN_QUERY
    ]
    cards = [
        responses.ModelCard(id=e.name, created=to_millis(e.created_at) // 1000, owned_by=e.creator)
        for e in queryable
    ]
    return responses.ModelList(data=cards)


@router.post("/chat/completions", response_model=responses.ChatCompletion, responses=_STREAM)
async def chat_completions(request: Request) -> Response:
    """Chat with the endpoint named in `model` (its task must be llm/v1/chat)."""
    return await answer(request, QueryKind.CHAT)


@router.post("/completions", response_model=responses.TextCompletion, responses=_STREAM)
async def completions(request: Request) -> Response:
    """Complete a prompt with the endpoint named in `model` (task llm/v1/completions)."""
    return await answer(request, QueryKind.COMPLETIONS)


@router.post("/embeddings", response_model=responses.EmbeddingList)
async def embeddings(request: Request) -> Response:
    """Embed texts with the endpoint named in `model` (task llm/v1/embeddings)."""
    return await answer(request, QueryKind.EMBEDDINGS)


@router.post("/{name}/invocations", response_model=Answer, responses=_STREAM)
async def invocations(name: str, request: Request) -> Response:
    """Query endpoint `name` with the body its task takes (see its /openapi)."""
    return await answer(request, None, name)


# -- the hot path's door ---------------------------------------------------------------------
_OPENAI_ROUTES = {
    "/chat/completions": QueryKind.CHAT,
    "/completions": QueryKind.COMPLETIONS,
    "/embeddings": QueryKind.EMBEDDINGS,
}


class QueryDoor:
    """ASGI middleware: the POST query routes above go straight to `answer`; every other
    request goes on through FastAPI.

    The routes above declare the query API (its OpenAPI, and the same answer when reached
    through FastAPI); this door skips FastAPI's per-route machinery (routing through
    every management route, dependency solving, five more coroutine frames resumed at
    each await): about a sixth of the gateway's CPU per query in a profile. Installed as the
    innermost user middleware, so the outer ones (`errors.UnhandledErrors`, the JSON 500
    with a request id) still wrap it; an `ApiError` becomes the same JSON error the app's
    handler sends. The query body's
    limit is `answer`'s own (`gateway.max_body_bytes`), a 413 in that JSON shape."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            kind, name = _query_route(scope["path"])
            if kind is not None or name is not None:
                request = Request(scope, receive)
                try:
                    response = await answer(request, kind, name)
                except ApiError as exc:
                    response = error_response(exc)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _query_route(path: str) -> tuple[QueryKind | None, str | None]:
    """(kind, None) for an OpenAI route, (None, name) for `{name}/invocations`, else
    (None, None)."""
    if not path.startswith(PREFIX):
        return None, None
    rest = path[len(PREFIX) :]
    kind = _OPENAI_ROUTES.get(rest)
    if kind is not None:
        return kind, None
    name, slash, tail = rest[1:].partition("/")
    if slash and tail == "invocations" and name and rest[0] == "/":
        return None, name
    return None, None


# -- one query -------------------------------------------------------------------------------
async def answer(request: Request, kind: QueryKind | None, name: str | None = None) -> Response:
    """One query, from the HTTP request to its usage row. `kind` is the OpenAI route's, or
    None for `invocations` (the endpoint's task decides); `name` the endpoint, or None when
    the body's `model` names it."""
    gateway = _gateway(request)
    # 2. authenticate, resolve the target: caller, endpoint, CAN_QUERY, limits (cached).
    #    Who asks is known before a byte of the body is read (an OpenAI route's endpoint
    #    is named in the body: its caller is authenticated first, the endpoint after).
    authorization = request.headers.get("authorization")
    max_bytes = gateway.settings.gateway.max_body_bytes
    if name is not None:
        target = await gateway.targets.resolve(authorization, name)
        data = await _body(request, max_bytes)
        raw = _json_object(data)
    else:
        await gateway.targets.caller(authorization)
        data = await _body(request, max_bytes)
        raw = _json_object(data)
        target = await gateway.targets.resolve(authorization, _model_of(raw))
    # 3. the body's kind is the endpoint's task; the traffic split picks the candidates
    kind = _kind_for(target, kind, raw)
    candidates = traffic.candidates(target)
    # 4. the body, validated once; its prompt as token ids, per tokenizer, on first use
    body = parse_request(kind, raw)
    # 4b. the endpoint's guardrails: the prompt screened (masked, or blocked) before it is
    #     tokenized; what the output guardrails rule out refused now
    guard_model = gateway.settings.gateway.guard_model_endpoint is not None
    screens = Screens.of(target.ai_gateway, guard_model=guard_model)
    screens.check_request(body)
    screened = screen_input(body, screens.input)
    body = screened.body
    prompt = PromptIds(body, gateway.tokenizers, len(data))
    request_id = uuid.uuid4().hex
    # 5. rate limit: every limit counts the call; a token limit also counts the prompt,
    #    tokenized for it now under the first candidate's tokenizer
    limits_tokens = any(rule.tokens is not None for rule in target.rules)
    if prompt.large:  # judged by its length first; tokenized off the event loop
        prompt_tokens = await _large_prompt_tokens(gateway, target, prompt, candidates[0])
    else:
        prompt_tokens = sum(map(len, prompt.of(candidates[0]))) if limits_tokens else 0
    hold = await hold_budget(gateway.budgets, target, request_id, body, prompt, candidates)
    try:
        reservation = await _admit(gateway, target, request_id, prompt_tokens)
    except BaseException:
        if hold is not None:
            gateway.budgets.release(hold)
        raise
    accounting = Accounting(
        request_id=request_id,
        target=target,
        entity=candidates[0],
        streaming=body.stream,
        client_request_id=body.client_request_id,
        usage_context=body.usage_context,
        reservation=reservation,
        request_time=_admitted_at(gateway, reservation),
        request_payload=_logged_request(raw, screened) if target.inference_table_enabled else None,
        ledger=gateway.ledger,
        limiter=gateway.limiter,
        metrics=gateway.metrics,
        budgets=gateway.budgets,
        budget_hold=hold,
    )
    if screened.hits:
        accounting.guarded(Direction.INPUT, screened.hits, blocked=screened.blocked)
    if screened.blocked:
        async with accounting:  # a usage row (no tokens) records the refusal
            raise screened.refusal()
    query = Query(gateway, authorization, target, candidates, prompt, accounting, screens, body)
    # 6-9. account (one usage row, whatever happens) around dispatch and shaping
    shaped: Answer
    if isinstance(body, EmbeddingsRequest):
        async with accounting:
            entity, shaped = await _embed(query, body)
    elif body.stream:
        return await responses.respond(_stream(query, body), body, accounting)
    else:
        async with accounting:  # the row is committed before the answer is sent
            entity, shaped = await _complete(query, body)
    return Response(
        shaped.model_dump_json(),
        media_type="application/json",
        headers={"served-model-name": entity.name},
    )


@dataclass(frozen=True)
class Query:
    """An accepted query, as the steps after admission need it."""

    gateway: Gateway
    authorization: str | None
    target: QueryTarget
    candidates: list[ServedEntity]
    prompt: PromptIds
    accounting: Accounting
    screens: Screens  # the endpoint's guardrails
    body: QueryRequest  # as screened (PII masked where the input guardrails mask it)

    @property
    def endpoint(self) -> str:
        return self.target.endpoint_name

    async def first_answer(
        self, call: Callable[[ServedEntity], Awaitable[T]]
    ) -> tuple[ServedEntity, T, Slot]:
        """Dispatch: `call` on the first candidate that answers; then, since a cached
        route may name apps a config update has since retired, on a re-read config's."""
        replicas, tried = self.gateway.replicas, self.accounting.tried
        if self.prompt.large:
            call = _tokenized_first(self.prompt, call)
        try:
            return await replicas.first_answer(self.target.labels, self.candidates, call, tried)
        except EntitiesUnavailable:
            fresh = await self.gateway.targets.reload(self.authorization, self.endpoint)
            if fresh.config_version == self.target.config_version:
                raise
            return await replicas.first_answer(fresh.labels, traffic.candidates(fresh), call, tried)

    def guard_model(self) -> GuardModel:
        return GuardModel(self.gateway, self.authorization, self.accounting.request_id)

    async def judge_input(self) -> None:
        """The guard model's verdict on the request (safety, valid_topics), before it is
        dispatched: a 400 when it flags it."""
        parameters = self.screens.judged_input
        if parameters is None:
            return
        hits = await self.guard_model().judge(parameters, judged_text(self.body))
        if hits:
            self.accounting.guarded(Direction.INPUT, hits, blocked=True)
            raise input_refusal(tuple(hit.kind for hit in hits))

    def output_judge(self) -> Judge | None:
        """The guard model on one answer choice, when the output guardrails ask for it."""
        parameters = self.screens.judged_output
        if parameters is None:
            return None
        model = self.guard_model()
        return lambda text: model.judge(parameters, text)

    def generation(self, body: GenerationBody, entity: ServedEntity) -> GenerationRequest:
        return body.generation_request(self.accounting.request_id, self.prompt.of(entity)[0])


async def _complete(
    query: Query, body: GenerationBody
) -> tuple[ServedEntity, responses.ChatCompletion | responses.TextCompletion]:
    replicas = query.gateway.replicas
    await query.judge_input()
    entity, result, slot = await query.first_answer(
        lambda e: replicas.complete(query.target.labels, e, query.generation(body, e))
    )
    slot.release()
    query.accounting.delivered(result.usage)
    result, hits, cut = screen_completion(result, query.screens.output)
    if hits:
        query.accounting.guarded(Direction.OUTPUT, hits, blocked=cut)
    judge = query.output_judge()
    if judge is not None:
        result = await _judged(result, judge, query.accounting)
    text_of = query.gateway.tokenizers.token_text(entity)
    rid = query.accounting.request_id
    answer: responses.ChatCompletion | responses.TextCompletion
    if isinstance(body, ChatRequest):
        answer = responses.chat_completion(rid, entity.name, result, text_of, body.tool_use())
    else:
        answer = responses.text_completion(rid, entity.name, result, text_of)
    query.accounting.answered(answer)
    return entity, answer


async def _embed(
    query: Query, body: EmbeddingsRequest
) -> tuple[ServedEntity, responses.EmbeddingList]:
    replicas = query.gateway.replicas
    await query.judge_input()
    entity, result, slot = await query.first_answer(
        lambda e: replicas.embed(query.target.labels, e, query.prompt.of(e))
    )
    slot.release()
    query.accounting.delivered(result.usage)
    vectors, tokens = result.vectors, result.usage.prompt_tokens
    answer = responses.embedding_list(entity.name, vectors, tokens, body.encoding_format)
    query.accounting.answered(answer)
    return entity, answer


async def _stream(query: Query, body: GenerationBody) -> AsyncGenerator[str, None]:
    """Steps 7-9 of a stream (dispatch, shape, account), as SSE events. The first item ("")
    says the first chunk arrived: an error before it is a plain HTTP error, one after it an
    error event. The usage row is committed before the usage chunk and `data: [DONE]`."""
    accounting, replicas = query.accounting, query.gateway.replicas
    started = False
    try:
        async with accounting:
            await query.judge_input()
            entity, (first, rest), slot = await query.first_answer(
                lambda e: replicas.open_stream(query.target.labels, e, query.generation(body, e))
            )
            try:
                accounting.prompt_processed(first.usage)  # counts even if the client leaves now
                started = True
                yield ""
                text_of = query.gateway.tokenizers.token_text(entity)
                screen = OutputScreen(query.screens.output, body.n, query.output_judge())
                events = responses.events(body, accounting, first, rest, text_of, screen)
                async for event in events:
                    yield event
            finally:
                slot.release()
                await rest.aclose()  # cancels the replica's stream if it is still running
    except Exception as exc:
        if not started:
            raise
        yield responses.error_event(exc)
        return
    yield responses.closing(body, accounting)


async def _judged(result: Completion, judge: Judge, accounting: Accounting) -> Completion:
    """A whole answer with each choice the guard model flags withheld ("content_filter")."""
    texts, reasons = dict(result.texts), dict(result.finish_reasons)
    for index, text in result.texts.items():
        hits = await judge(text) if text else ()
        if hits:
            accounting.guarded(Direction.OUTPUT, hits, blocked=True)
            texts[index], reasons[index] = "", "content_filter"
    return dataclasses.replace(result, texts=texts, finish_reasons=reasons)


def _logged_request(raw: JsonObject, screened: ScreenedInput) -> str:
    """The request as the inference table keeps it: as sent, or with the PII the input
    guardrails masked masked (fields as the caller set them)."""
    if not any(hit.action is Action.MASK for hit in screened.hits):
        return json.dumps(raw)
    return screened.body.model_dump_json(exclude_unset=True, by_alias=True)


def _tokenized_first(
    prompt: PromptIds, call: Callable[[ServedEntity], Awaitable[T]]
) -> Callable[[ServedEntity], Coroutine[Any, Any, T]]:
    """`call`, once the (large) prompt is tokenized for the entity off the event loop and
    fits its context (else the engine's 400, without sending the prompt)."""

    async def tokenized_call(entity: ServedEntity) -> T:
        await prompt.tokenized(entity)
        prompt.refuse_past_context(entity)
        return await call(entity)

    return tokenized_call


# -- the rate-limit step ----------------------------------------------------------------------
async def _admit(
    gateway: Gateway, target: QueryTarget, request_id: str, prompt_tokens: int
) -> Reservation | None:
    """Admit the query under every rate limit that applies, or 429 with Retry-After."""
    if not target.rules:
        return None
    try:
        return await gateway.limiter.reserve(request_id, target.rules, prompt_tokens)
    except (RateLimited, RateLimiterUnavailable) as exc:
        raise _refusal(gateway, target, exc) from None


async def _large_prompt_tokens(
    gateway: Gateway, target: QueryTarget, prompt: PromptIds, first: ServedEntity
) -> int:
    """The prompt tokens a large prompt counts in the rate limits (0 when no limit counts
    tokens), each check before the expensive one: a prompt whose length alone puts it past
    the first candidate's context is a 400; one the limits refuse even at its least
    possible size a 429; only then is it tokenized, in a worker thread."""
    prompt.refuse_past_context(first)
    if not any(rule.tokens is not None for rule in target.rules):
        return 0  # `_admit` counts the call; the prompt is tokenized at dispatch
    try:
        await gateway.limiter.check(target.rules, sum(prompt.least_tokens(first)))
    except (RateLimited, RateLimiterUnavailable) as exc:
        raise _refusal(gateway, target, exc) from None
    return sum(map(len, await prompt.tokenized(first)))


def _refusal(
    gateway: Gateway, target: QueryTarget, exc: RateLimited | RateLimiterUnavailable
) -> ApiError:
    """A limiter's refusal as the HTTP error: 429 with Retry-After, or 503."""
    if isinstance(exc, RateLimited):
        gateway.metrics.rate_limited.labels(*target.labels, exc.rule.key).inc()
        return RequestLimitExceeded(
            f"rate limit of endpoint {target.endpoint_name!r} exceeded "
            f"({exc.rule.describe()}); retry in {exc.retry_after_s} s",
            headers={"Retry-After": str(exc.retry_after_s)},
        )
    # Where the counters live (and why they are unreachable) is the operator's business:
    # the limiter logs it once per outage; the caller learns only when to come back.
    return TemporarilyUnavailable(
        "rate limits cannot be checked right now; retry shortly",
        headers={"Retry-After": str(gateway.settings.gateway.retry_after_s)},
    )


def _admitted_at(gateway: Gateway, reservation: Reservation | None) -> datetime:
    """When the query was admitted: the shared limiter's clock when it has one (so rows of
    several processes order exactly as the limiter admitted them), else now."""
    if reservation is not None and reservation.rules and gateway.limiter.wall_clock:
        return datetime.fromtimestamp(reservation.admitted_at_s, UTC)
    return utcnow()


# -- the request, before the query ------------------------------------------------------------
def _gateway(request: Request) -> Gateway:
    # The app state, not a FastAPI dependency: this is the hot path.
    gateway: Gateway | None = request.app.state.plane.gateway
    if gateway is None:
        raise TemporarilyUnavailable("the query gateway is starting", headers={"Retry-After": "1"})
    return gateway


class BodyTooLarge(ApiError):
    status_code = 413
    error_code = "BAD_REQUEST"


class ClientGone(ApiError):
    """The client left while its body was being read: nobody hears the answer, and nothing
    is logged (uvicorn drops what is sent after a disconnect)."""

    status_code = 499
    error_code = "CANCELLED"


async def _body(request: Request, max_bytes: int) -> bytes:
    """The request body, at most `max_bytes`: a 413 as soon as it is known to be larger
    (from Content-Length, before reading anything, or once the bytes read pass it)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(max_bytes)
    chunks: list[bytes] = []
    size, receive = 0, request.receive
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise ClientGone("the client went away before its request body arrived")
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > max_bytes:
            raise _too_large(max_bytes)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)  # one chunk: itself, not a copy


def _too_large(max_bytes: int) -> BodyTooLarge:
    return BodyTooLarge(
        f"the request body is larger than this server's limit of {max_bytes} bytes "
        "(gateway.max_body_bytes)"
    )


def _json_object(data: bytes) -> JsonObject:
    try:
        raw = json.loads(data)
    except ValueError:
        raise InvalidParameter("the request body must be JSON") from None
    except RecursionError:  # each nesting level is a frame of the parser
        raise InvalidParameter(
            "the request body nests too deeply (hundreds of levels of arrays or objects); "
            "a query body nests a few"
        ) from None
    if not isinstance(raw, dict):
        raise InvalidParameter("the request body must be a JSON object")
    return raw


def _model_of(raw: JsonObject) -> str:
    model = raw.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidParameter("name the endpoint in the body's `model` field (a string)")
    return model


def _kind_for(target: QueryTarget, route: QueryKind | None, raw: JsonObject) -> QueryKind:
    """The kind of request the endpoint answers: its task's. An OpenAI route of another
    kind, or a native body carrying another kind's field, is refused naming the task."""
    kind = KIND_OF_TASK[target.task]
    name, task = target.endpoint_name, target.task.value
    if route is not None and route != kind:
        raise InvalidParameter(
            f"endpoint {name!r} serves {task}: send its queries to "
            f"POST /serving-endpoints/{kind.value}, not /{route.value}"
        )
    foreign = sorted(field for k, field in KIND_FIELD.items() if k != kind and field in raw)
    if foreign:
        raise InvalidParameter(
            f"endpoint {name!r} serves {task}: its requests carry `{KIND_FIELD[kind]}`, "
            f"not `{'`, `'.join(foreign)}`"
        )
    return kind
