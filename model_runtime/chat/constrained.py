"""JSON-schema-constrained decoding with llguidance, plus the schemas for tool calls and their validation.

The decoder compiles a JSON schema into an llguidance grammar (compact separators, no free whitespace),
and at every step masks the logits of tokens that would leave the grammar. Object schemas get
``additionalProperties: false`` (otherwise a small model invents keys until the token limit) and ``$ref``
is inlined so tool argument schemas can be nested into one tool-call schema.

Tool calls are generated as a JSON array of ``{"name": ..., "arguments": {...}}`` (parallel calls), or,
when calling a tool is optional, as ``{"answer": "..."}``.
"""

from __future__ import annotations

import copy
import json
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import llguidance
import numpy as np
import torch

from deepscout.model_runtime.chat.exceptions import ChatModelError
from deepscout.model_runtime.chat.tool_spec import ToolSpec

JSON_OPTIONS: Any = {"whitespace_flexible": False, "item_separator": ",", "key_separator": ":"}
"""llguidance JSON compile options; :func:`dump_compact` writes the same layout."""

ANSWER_KEY = "answer"


class SchemaError(ChatModelError, ValueError):
    """A JSON schema cannot be used for constrained decoding (the message says why)."""


def dump_compact(value: Any) -> str:
    """JSON in the layout the grammar produces (so history renders exactly as generated)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def strict_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``schema`` with ``$ref`` inlined, ``$defs``/``title`` dropped, and closed objects."""
    definitions = {**schema.get("definitions", {}), **schema.get("$defs", {})}
    return _strict(copy.deepcopy(dict(schema)), definitions, depth=0)


def _strict(node: Any, definitions: Mapping[str, Any], depth: int) -> Any:
    if depth > 32:
        raise SchemaError("schema nests too deeply (recursive $ref?); recursive schemas are not supported")
    if isinstance(node, list):
        return [_strict(item, definitions, depth + 1) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        reference = node.pop("$ref")
        name = str(reference).rsplit("/", 1)[-1]
        if name not in definitions:
            raise SchemaError(f"unresolvable $ref {reference!r} in schema")
        merged = {**copy.deepcopy(definitions[name]), **node}
        return _strict(merged, definitions, depth + 1)
    result: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("$defs", "definitions", "title"):
            continue
        if key == "properties" and isinstance(value, dict):
            result[key] = {name: _strict(sub, definitions, depth + 1) for name, sub in value.items()}
        else:
            result[key] = _strict(value, definitions, depth + 1)
    if result.get("type") == "object" or "properties" in result:
        result.setdefault("additionalProperties", False)
    return result


def cap_strings(schema: Any, max_chars: int) -> Any:
    """A copy of ``schema`` where every string without a ``maxLength`` gets ``max_chars``.

    Bounds what a small model can ramble into one argument before the grammar makes it close the string.
    """
    if isinstance(schema, list):
        return [cap_strings(item, max_chars) for item in schema]
    if not isinstance(schema, dict):
        return schema
    capped = {key: cap_strings(value, max_chars) for key, value in schema.items()}
    if capped.get("type") == "string" and "enum" not in capped and "const" not in capped:
        capped.setdefault("maxLength", max_chars)
    return capped


def tool_call_schema(tools: Sequence[ToolSpec], *, max_calls: int, allow_answer: bool) -> dict[str, Any]:
    """The schema of one model turn: an array of 1..max_calls tool calls, or (optionally) an answer."""
    if not tools:
        raise SchemaError("tool-call schema needs at least one tool")
    call_variants = [
        {
            "type": "object",
            "properties": {"name": {"const": tool.name}, "arguments": tool.parameters},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for tool in tools
    ]
    calls = {
        "type": "array",
        "items": call_variants[0] if len(call_variants) == 1 else {"anyOf": call_variants},
        "minItems": 1,
        "maxItems": max_calls,
    }
    if not allow_answer:
        return calls
    answer = {
        "type": "object",
        "properties": {ANSWER_KEY: {"type": "string"}},
        "required": [ANSWER_KEY],
        "additionalProperties": False,
    }
    return {"anyOf": [calls, answer]}


class JsonGrammar:
    """A JSON schema compiled for one tokenizer; hands out a fresh :class:`GrammarGuide` per generation."""

    def __init__(self, tokenizer: llguidance.LLTokenizer, vocab_size: int, schema: Mapping[str, Any]) -> None:
        self.schema = dict(schema)
        self._tokenizer = tokenizer
        self._vocab_size = vocab_size
        self._grammar = llguidance.LLMatcher.grammar_from_json_schema(self.schema, defaults=JSON_OPTIONS)
        is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(self._grammar, tokenizer)
        if is_error:
            raise SchemaError(f"llguidance rejected the schema: {messages[0]}")

    def guide(self) -> GrammarGuide:
        matcher = llguidance.LLMatcher(self._tokenizer, self._grammar, log_level=0)
        if matcher.is_error():
            raise SchemaError(f"llguidance could not start the grammar: {matcher.get_error()}")
        return GrammarGuide(matcher, self._vocab_size)


class GrammarGuide:
    """Per-generation grammar state implementing the generator's ``LogitsGuide`` protocol."""

    def __init__(self, matcher: llguidance.LLMatcher, vocab_size: int) -> None:
        self._matcher = matcher
        self._vocab_size = vocab_size
        words = (vocab_size + 31) // 32
        self._bitmask = torch.zeros(words, dtype=torch.int32)
        self.seconds = 0.0
        """Time spent computing masks and advancing the grammar (the constraint's overhead)."""

    def apply(self, logits: torch.Tensor) -> None:
        started = time.perf_counter()
        self._matcher.unsafe_compute_mask_ptr(self._bitmask.data_ptr(), self._bitmask.numel() * 4)
        if self._matcher.is_error():
            raise SchemaError(f"grammar error while decoding: {self._matcher.get_error()}")
        # Bit j of word i allows token 32*i + j: little-endian bytes unpack in token order.
        allowed = np.unpackbits(self._bitmask.numpy().view(np.uint8), bitorder="little")[: self._vocab_size]
        values = logits.numpy()  # numpy in place: torch's masked_fill_ costs ~10 ms here on a busy CPU
        width = min(values.shape[-1], allowed.shape[0])
        np.putmask(values[:width], allowed[:width] == 0, -np.inf)
        values[width:] = -np.inf
        self.seconds += time.perf_counter() - started

    def accept(self, token_id: int) -> None:
        started = time.perf_counter()
        if not self._matcher.consume_token(token_id):
            raise SchemaError(f"grammar refused token {token_id}: {self._matcher.get_error()}")
        self.seconds += time.perf_counter() - started

    @property
    def finished(self) -> bool:
        return bool(self._matcher.is_stopped())

    @property
    def accepting(self) -> bool:
        return bool(self._matcher.is_accepting())


class GrammarCache:
    """Compiled grammars keyed by their schema, so a bound tool set compiles once per model."""

    def __init__(self, tokenizer: llguidance.LLTokenizer, vocab_size: int, limit: int = 32) -> None:
        self._tokenizer = tokenizer
        self._vocab_size = vocab_size
        self._limit = limit
        self._grammars: dict[str, JsonGrammar] = {}
        self._lock = threading.Lock()

    def get(self, schema: Mapping[str, Any]) -> JsonGrammar:
        key = json.dumps(schema, sort_keys=True)
        with self._lock:
            grammar = self._grammars.get(key)
            if grammar is None:
                if len(self._grammars) >= self._limit:
                    self._grammars.pop(next(iter(self._grammars)))
                grammar = JsonGrammar(self._tokenizer, self._vocab_size, schema)
                self._grammars[key] = grammar
            return grammar


_TYPE_CHECKS: dict[str, Any] = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
}


def schema_errors(schema: Mapping[str, Any], value: Any, path: str = "$") -> list[str]:
    """Violations of the common JSON-schema keywords (type, enum, const, properties, required,
    additionalProperties, items, min/maxItems, min/maxLength, minimum/maximum, anyOf/oneOf/allOf).

    Used for schemas given as plain dicts; pydantic models are validated by pydantic itself.
    """
    errors: list[str] = []
    for key in ("anyOf", "oneOf"):
        if key in schema and not any(not schema_errors(option, value, path) for option in schema[key]):
            errors.append(f"{path}: matches none of the {key} options")
    for option in schema.get("allOf", []):
        errors.extend(schema_errors(option, value, path))
    expected = schema.get("type")
    if expected is not None:
        types = expected if isinstance(expected, list) else [expected]
        if not any(_TYPE_CHECKS.get(t, lambda _v: True)(value) for t in types):
            return [*errors, f"{path}: expected {expected}, got {type(value).__name__}"]
    if "const" in schema and value != schema["const"]:
        errors.append(f"{path}: expected {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} is not one of {schema['enum']}")
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        errors.extend(f"{path}: missing {name!r}" for name in schema.get("required", []) if name not in value)
        for name, item in value.items():
            if name in properties:
                errors.extend(schema_errors(properties[name], item, f"{path}.{name}"))
            elif schema.get("additionalProperties") is False:
                errors.append(f"{path}: unexpected key {name!r}")
    if isinstance(value, list):
        if "items" in schema:
            for index, item in enumerate(value):
                errors.extend(schema_errors(schema["items"], item, f"{path}[{index}]"))
        if len(value) < schema.get("minItems", 0) or len(value) > schema.get("maxItems", len(value)):
            errors.append(f"{path}: {len(value)} items outside the allowed count")
    if isinstance(value, str) and not (
        schema.get("minLength", 0) <= len(value) <= schema.get("maxLength", len(value))
    ):
        errors.append(f"{path}: string length {len(value)} outside the allowed range")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{path}: {value} < minimum {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{path}: {value} > maximum {schema['maximum']}")
    return errors
