"""An endpoint's AI-gateway settings (Databricks `AiGatewayConfig` shapes): rate limits,
usage tracking, inference tables, guardrails and fallback. One model serves the request
body, the stored column and the response, so what is echoed back is what is enforced.
Unknown fields are ignored, as the Databricks service does, so newer SDKs keep working."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Settings(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class RateLimitKey(StrEnum):
    USER = "user"
    ENDPOINT = "endpoint"
    USER_GROUP = "user_group"
    SERVICE_PRINCIPAL = "service_principal"


class RateLimit(_Settings):
    calls: int | None = Field(default=None, ge=0, description="queries per renewal period")
    tokens: int | None = Field(default=None, ge=0, description="input + output tokens")
    key: RateLimitKey = Field(
        default=RateLimitKey.USER, description="whose budget: each user's, the endpoint's, ..."
    )
    principal: str | None = Field(
        default=None,
        max_length=255,
        description="a limit of one user, service principal or group (default: everyone's)",
    )
    renewal_period: Literal["minute"] = "minute"


class UsageTrackingConfig(_Settings):
    enabled: bool | None = None


class InferenceTableConfig(_Settings):
    enabled: bool | None = None
    catalog_name: str | None = Field(default=None, max_length=255)
    schema_name: str | None = Field(default=None, max_length=255)
    table_name_prefix: str | None = Field(default=None, max_length=255)


class PiiBehavior(StrEnum):
    NONE = "NONE"
    BLOCK = "BLOCK"
    MASK = "MASK"


class PiiSettings(_Settings):
    behavior: PiiBehavior | None = None


MAX_KEYWORD_CHARS = 256
MAX_TOPICS_CHARS = 4096  # all of a direction's valid_topics together
NO_GUARD_MODEL = (
    "needs a guard model (a classifier that judges the text), and this installation has "
    "none (its operator sets gateway.guard_model_endpoint): leave it out, or use "
    "invalid_keywords and pii"
)


class GuardrailParameters(_Settings):
    safety: bool | None = None
    pii: PiiSettings | None = None
    invalid_keywords: list[str] | None = Field(default=None, max_length=1000)
    valid_topics: list[str] | None = Field(default=None, max_length=1000)

    @property
    def judged(self) -> bool:
        """Whether a guard model must judge the text (safety, valid_topics)."""
        return bool(self.safety or self.valid_topics)

    def problem(self, where: str, *, guard_model: bool) -> str | None:
        """Why these guardrails cannot be enforced here, naming the field; None when they
        can. `guard_model`: whether the installation has one. Checked when a config is
        set, not when a stored one is read (a config stored under other settings still
        loads; its queries are refused instead)."""
        if self.safety and not guard_model:
            return f"{where}.safety {NO_GUARD_MODEL}"
        if self.valid_topics and not guard_model:
            return f"{where}.valid_topics {NO_GUARD_MODEL}"
        topics = self.valid_topics or []
        if any(not t.strip() for t in topics) or sum(map(len, topics)) > MAX_TOPICS_CHARS:
            return (
                f"{where}.valid_topics must be non-blank topics of at most {MAX_TOPICS_CHARS} "
                "characters together"
            )
        for i, keyword in enumerate(self.invalid_keywords or []):
            if not keyword.strip() or len(keyword) > MAX_KEYWORD_CHARS:
                return (
                    f"{where}.invalid_keywords[{i}] must hold 1-{MAX_KEYWORD_CHARS} characters "
                    "and not only whitespace"
                )
        return None


class Guardrails(_Settings):
    input: GuardrailParameters | None = None
    output: GuardrailParameters | None = None

    def problem(self, *, guard_model: bool) -> str | None:
        for where, parameters in (("input", self.input), ("output", self.output)):
            if parameters is None:
                continue
            if why := parameters.problem(f"guardrails.{where}", guard_model=guard_model):
                return why
        return None


class FallbackConfig(_Settings):
    enabled: bool = Field(
        default=False,
        description="retry a query on the next served entity when one fails before its first token",
    )


class AiGatewayConfig(_Settings):
    rate_limits: list[RateLimit] | None = Field(default=None, max_length=100)
    usage_tracking_config: UsageTrackingConfig | None = None
    inference_table_config: InferenceTableConfig | None = None
    guardrails: Guardrails | None = None
    fallback_config: FallbackConfig | None = None

    def check_enforceable(self, *, guard_model: bool) -> None:
        """A 400 when a setting cannot be enforced (see `GuardrailParameters.problem`)."""
        from control_plane.errors import InvalidParameter

        why = None if self.guardrails is None else self.guardrails.problem(guard_model=guard_model)
        if why is not None:
            raise InvalidParameter(why)

    @property
    def fallback_enabled(self) -> bool:
        return self.fallback_config is not None and self.fallback_config.enabled

    @property
    def inference_table_enabled(self) -> bool:
        table = self.inference_table_config
        return table is not None and bool(table.enabled)
