"""The one error a chat template's rendering and encoding raise."""

from __future__ import annotations


class ChatTemplateError(ValueError):
    """A chat template failed: it raised, crossed a bound, did not compile, or cannot keep a
    message's special-token text apart from its own control tokens."""
