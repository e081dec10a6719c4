"""The OpenAPI document of one endpoint's query interface (what clients may send it)."""

from __future__ import annotations

from typing import Any

_MESSAGE = {
    "type": "object",
    "required": ["role", "content"],
    "properties": {
        "role": {"type": "string", "enum": ["system", "user", "assistant"]},
        "content": {"type": "string"},
    },
}
_PARAMS: dict[str, Any] = {
    "max_tokens": {"type": "integer", "minimum": 1},
    "temperature": {"type": "number", "minimum": 0, "maximum": 2},
    "top_p": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
    "top_k": {"type": "integer", "minimum": 0},
    "n": {"type": "integer", "minimum": 1, "maximum": 16},
    "stop": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
    "seed": {"type": "integer"},
    "stream": {"type": "boolean"},
}


def query_openapi(endpoint_name: str, base_url: str) -> dict[str, Any]:
    usage = {
        "type": "object",
        "properties": {
            "prompt_tokens": {"type": "integer"},
            "completion_tokens": {"type": "integer"},
            "total_tokens": {"type": "integer"},
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": f"{endpoint_name} query API", "version": "1"},
        "servers": [{"url": f"{base_url}/serving-endpoints/{endpoint_name}"}],
        "paths": {
            "/invocations": {
                "post": {
                    "summary": "Chat (messages) or completion (prompt) request",
                    "security": [{"bearerAuth": []}],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "oneOf": [
                                        {
                                            "type": "object",
                                            "required": ["messages"],
                                            "properties": {
                                                "messages": {"type": "array", "items": _MESSAGE},
                                                **_PARAMS,
                                            },
                                        },
                                        {
                                            "type": "object",
                                            "required": ["prompt"],
                                            "properties": {
                                                "prompt": {"type": "string"},
                                                **_PARAMS,
                                            },
                                        },
                                    ]
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "OpenAI-shaped completion (SSE chunks with stream)",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "properties": {
                                            "id": {"type": "string"},
                                            "object": {"type": "string"},
                                            "model": {"type": "string"},
                                            "choices": {"type": "array"},
                                            "usage": usage,
                                        },
                                    }
                                },
                                "text/event-stream": {"schema": {"type": "string"}},
                            },
                        }
                    },
                }
            }
        },
        "components": {"securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}}},
    }
