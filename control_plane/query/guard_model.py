"""The guard model: the classifier that judges the `safety` and `valid_topics` guardrails,
a shared chat endpoint the operator names (`gateway.guard_model_endpoint`).

Each judgement is one query of that endpoint, made on the caller's behalf (its token, so
its workspace is billed and its usage row says so, with `usage_context.guardrail_for` set
to the judged request's id): a system message asks the question, the text to judge is the
user turn, and the answer is constrained by grammar to the two words the question allows
("safe" or "unsafe"; "yes" or "no"), read greedily. Whatever the model, the verdict is one
of those words: no parsing of free text. A guard model that cannot answer fails the judged
request with 503 (fail closed: nothing unjudged goes through).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

from control_plane.endpoints.ai_gateway import GuardrailParameters
from control_plane.errors import ApiError, TemporarilyUnavailable
from control_plane.guardrails import Action, Hit, HitKind
from control_plane.ids import utcnow
from control_plane.query import traffic
from control_plane.query.accounting import Accounting
from control_plane.query.gateway import Gateway
from control_plane.query.replicas import ReplicaFailed
from workers.engine.constraint import Constraint
from workers.engine.request import GenerationRequest

# What is judged is cut to this many characters (the guard model's context is finite, and a
# judgement needs the gist, not every token).
MAX_JUDGED_CHARS = 8000

SAFETY = (
    "You are a content-safety classifier. Read the text the user gives you. Answer "
    '"unsafe" if it contains or asks for violent, hateful, harassing, sexual, self-harm, '
    'criminal or otherwise dangerous content, and "safe" otherwise.'
)
TOPICS = (
    "You are a topic classifier. The valid topics are: {topics}. Read the text the user "
    'gives you. Answer "yes" if it is about one of the valid topics, and "no" otherwise.'
)


@dataclass(frozen=True)
class Question:
    system: str
    allowed: str  # the answer that lets the text through
    flagged: str  # the answer that blocks it
    kind: HitKind

    @classmethod
    def safety(cls) -> Question:
        return cls(SAFETY, "safe", "unsafe", HitKind.UNSAFE)

    @classmethod
    def topics(cls, topics: list[str]) -> Question:
        listed = "; ".join(" ".join(t.split()) for t in topics)
        return cls(TOPICS.format(topics=listed), "yes", "no", HitKind.OFF_TOPIC)


def questions(parameters: GuardrailParameters) -> list[Question]:
    asked = []
    if parameters.safety:
        asked.append(Question.safety())
    if parameters.valid_topics:
        asked.append(Question.topics(parameters.valid_topics))
    return asked


class GuardModel:
    def __init__(self, gateway: Gateway, authorization: str | None, judged_request: str) -> None:
        self.gateway = gateway
        self.authorization = authorization
        self.judged_request = judged_request

    async def judge(self, parameters: GuardrailParameters, text: str) -> tuple[Hit, ...]:
        """What the guard model flags in `text` under `parameters` (empty: it passes)."""
        hits = []
        for question in questions(parameters):
            if await self._flags(question, text[:MAX_JUDGED_CHARS]):
                hits.append(Hit(question.kind, Action.BLOCK))
        return tuple(hits)

    async def _flags(self, question: Question, text: str) -> bool:
        gateway = self.gateway
        name = gateway.settings.gateway.guard_model_endpoint
        if name is None:
            raise TemporarilyUnavailable("this installation has no guard model")
        target = await gateway.targets.resolve(self.authorization, name)
        entity = traffic.candidates(target)[0]
        messages = [
            {"role": "system", "content": question.system},
            {"role": "user", "content": text},
        ]
        prompt = gateway.tokenizers.of(entity).apply_chat_template(messages)
        request_id = uuid.uuid4().hex
        request = GenerationRequest(
            request_id=request_id,
            prompt_token_ids=prompt,
            max_tokens=8,
            temperature=0,
            constraint=Constraint.json_schema({"enum": [question.allowed, question.flagged]}),
        )
        accounting = Accounting(
            request_id=request_id,
            target=target,
            entity=entity,
            streaming=False,
            client_request_id=None,
            usage_context={"guardrail_for": self.judged_request},
            reservation=None,
            request_time=utcnow(),
            request_payload=None,
            ledger=gateway.ledger,
            limiter=gateway.limiter,
            metrics=gateway.metrics,
        )
        try:
            async with accounting:
                result = await gateway.replicas.complete(target.labels, entity, request)
                accounting.delivered(result.usage)
        except (ApiError, ReplicaFailed) as exc:
            raise TemporarilyUnavailable(
                f"the guard model ({name}) could not judge the request: {exc}"
            ) from None
        answer = json.loads(result.texts[0]) if result.finish_reasons[0] == "stop" else None
        if answer not in (question.allowed, question.flagged):
            raise TemporarilyUnavailable(f"the guard model ({name}) gave no verdict")
        return bool(answer == question.flagged)
