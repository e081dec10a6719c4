"""What a constrained request's output must follow, and whether a grammar library can
compile it.

A `Constraint` crosses the control plane → replica boundary inside a `GenerationRequest`:
a JSON schema (the output is compact JSON that validates against it) or a Lark grammar in
llguidance's dialect (which may embed JSON schemas with `%json{...}`; tool calls use it).
`problem(constraint)` compiles it without a tokenizer, so the edge can answer 400 with the
library's reason before a replica is asked; the engine compiles it again against its
vocabulary. llguidance is imported where used.
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

# A schema or grammar this long is far past any real one; the bound keeps a hostile caller
# from handing the compiler megabytes.
MAX_SOURCE_CHARS = 256 * 1024


class ConstraintKind(StrEnum):
    JSON_SCHEMA = "json_schema"  # source: the schema, as JSON text
    LARK = "lark"  # source: a Lark grammar (llguidance's dialect)


class Constraint(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: ConstraintKind
    source: str = Field(min_length=1, max_length=MAX_SOURCE_CHARS)

    @classmethod
    def json_schema(cls, schema: dict[str, Any]) -> Constraint:
        return cls(kind=ConstraintKind.JSON_SCHEMA, source=json.dumps(schema))

    def grammar(self) -> str:
        """The llguidance grammar: compact JSON (no free whitespace, so that a model,
        random weights included, cannot pad forever between tokens; an override, so a
        schema's own `x-guidance` cannot turn it back on)."""
        from llguidance import LLMatcher

        if self.kind is ConstraintKind.JSON_SCHEMA:
            return str(
                LLMatcher.grammar_from_json_schema(
                    self.source, overrides={"whitespace_flexible": False}
                )
            )
        return str(LLMatcher.grammar_from_lark(self.source))


def problem(constraint: Constraint) -> str | None:
    """Why the grammar library cannot compile `constraint`; None when it can."""
    from llguidance import LLMatcher

    try:
        grammar = constraint.grammar()
    except ValueError as exc:  # not JSON, or not an object
        return str(exc)
    error = LLMatcher.validate_grammar(grammar)
    return str(error) if error else None
