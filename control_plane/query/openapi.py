"""The OpenAPI 3.1 document of one endpoint's query interface, generated from the request
and response models the query path itself validates and sends — so it cannot drift."""

from __future__ import annotations

from pydantic import BaseModel, JsonValue
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from control_plane.endpoints.config import Task
from control_plane.query import responses
from control_plane.query.requests import KIND_OF_TASK, REQUEST_MODELS, QueryKind

_ANSWERS: dict[QueryKind, type[BaseModel]] = {
    QueryKind.CHAT: responses.ChatCompletion,
    QueryKind.COMPLETIONS: responses.TextCompletion,
    QueryKind.EMBEDDINGS: responses.EmbeddingList,
}
_CHUNKS: dict[QueryKind, type[BaseModel]] = {
    QueryKind.CHAT: responses.ChatCompletionChunk,
    QueryKind.COMPLETIONS: responses.TextCompletion,
}
_REF = "#/components/schemas/{model}"


def query_openapi(endpoint_name: str, task: Task, base_url: str) -> dict[str, JsonValue]:
    kind = KIND_OF_TASK[task]
    request, answer = REQUEST_MODELS[kind], _ANSWERS[kind]
    models: list[tuple[type[BaseModel], JsonSchemaMode]] = [
        (request, "validation"),
        (answer, "serialization"),
    ]
    chunk = _CHUNKS.get(kind)
    if chunk is not None:
        models.append((chunk, "serialization"))
    refs, schemas = models_json_schema(models, ref_template=_REF)
    content: dict[str, JsonValue] = {
        "application/json": {"schema": refs[(answer, "serialization")]}
    }
    if chunk is not None:
        content["text/event-stream"] = {
            "schema": {
                "type": "string",
                "description": "with `stream: true`: `data: <chunk>` lines of "
                f"{chunk.__name__}, then `data: [DONE]`",
            }
        }
    return {
        "openapi": "3.1.0",
        "info": {"title": f"{endpoint_name} query API ({task.value})", "version": "1"},
        "servers": [{"url": f"{base_url}/serving-endpoints/{endpoint_name}"}],
        "paths": {
            "/invocations": {
                "post": {
                    "summary": f"A {kind.value} request",
                    "security": [{"bearerAuth": []}],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": refs[(request, "validation")]}},
                    },
                    "responses": {"200": {"description": "the answer", "content": content}},
                }
            }
        },
        "components": {
            "schemas": schemas.get("$defs", {}),
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
        },
    }
