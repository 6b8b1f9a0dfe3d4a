"""Agent-shaped requests, generated: every decoder, estimator, translator and cache key either
handles them or refuses them with a 4xx; none raises anything else (a 5xx to the caller).

The shapes are the ones agents send: nested tool schemas whose properties are named like
JSON-schema keywords (`type`, `items`, `properties`, `enum`, `$ref`), content blocks and input
items of known and unknown types, namespaces, client-executed tools. Example counts are bounded
so the file stays fast.
"""

from __future__ import annotations

import os

import msgspec
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cache.prefix import prefix_fingerprint
from cache.response import ResponseCache
from cache.store import MemoryStore
from gateway.app import WIRES
from protocols.api import Api
from protocols.errors import GatewayError, Untranslatable
from protocols.translate import Hints, find
from protocols.text import estimate_tokens, text_chars

KEYWORDS = ["type", "items", "properties", "enum", "$ref", "required", "description", "anyOf", "name", "text",
            "input", "content", "role", "tools"]
scalar = st.one_of(st.none(), st.booleans(), st.integers(-3, 70000), st.text(max_size=12),
                   st.sampled_from(["object", "string", "array", "image", "input_image", "text", "function"]))
json_value = st.recursive(scalar, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(KEYWORDS), inner, max_size=4)), max_leaves=12)
schema = st.recursive(
    st.fixed_dictionaries({"type": st.sampled_from(["string", "integer", "object", "array"])}),
    lambda inner: st.one_of(
        st.fixed_dictionaries({"type": st.just("object"),
                               "properties": st.dictionaries(st.sampled_from(KEYWORDS), inner, max_size=4)}),
        st.fixed_dictionaries({"type": st.just("array"), "items": inner}),
        st.fixed_dictionaries({"enum": st.lists(scalar, max_size=3)}),
        st.fixed_dictionaries({"$ref": st.text(max_size=8)})),
    max_leaves=10)
part_type = st.one_of(st.sampled_from(["text", "image", "tool_use", "tool_result", "thinking", "document",
                                       "input_text", "output_text", "input_image", "refusal", "server_tool_use",
                                       "mystery"]), json_value)
block = st.fixed_dictionaries({"type": part_type}, optional={
    "text": st.one_of(st.text(max_size=20), json_value), "id": st.text(max_size=6), "name": st.text(max_size=6),
    "input": json_value, "content": json_value, "tool_use_id": st.text(max_size=6),
    "source": st.dictionaries(st.sampled_from(["type", "data", "url", "media_type"]), scalar, max_size=3)})
content = st.one_of(st.text(max_size=30), st.lists(block, max_size=3))
role = st.sampled_from(["user", "assistant", "system", "developer", "tool", "critic"])
anthropic_tool = st.fixed_dictionaries({"name": st.text(min_size=1, max_size=10), "input_schema": schema},
                                       optional={"type": st.sampled_from(["custom", "web_search_20250305"]),
                                                 "defer_loading": st.booleans(), "description": st.text(max_size=10)})
messages_body = st.fixed_dictionaries({
    "model": st.just("m"), "max_tokens": st.integers(1, 50000),
    "messages": st.lists(st.fixed_dictionaries({"role": role, "content": content}), min_size=1, max_size=4)},
    optional={"system": content, "tools": st.lists(anthropic_tool, max_size=3), "stream": st.booleans(),
              "thinking": json_value, "tool_choice": st.dictionaries(st.sampled_from(["type", "name"]), scalar)})

function_tool = st.fixed_dictionaries({"type": st.just("function"), "name": st.text(min_size=1, max_size=10),
                                       "parameters": schema})
leaf_tool = st.one_of(
    function_tool,
    st.fixed_dictionaries({"type": st.just("custom"), "name": st.text(min_size=1, max_size=10)},
                          optional={"format": json_value}),
    st.fixed_dictionaries({"type": st.sampled_from(["tool_search", "shell", "mystery"]), "execution": st.just("client")},
                          optional={"parameters": schema, "description": st.text(max_size=10)}),
    st.fixed_dictionaries({"type": st.sampled_from(["web_search", "file_search"])}))
responses_tool = st.one_of(leaf_tool, st.fixed_dictionaries({
    "type": st.just("namespace"), "name": st.text(max_size=8), "tools": st.lists(leaf_tool, max_size=3)}))
item = st.one_of(
    st.fixed_dictionaries({"role": role, "content": content}),
    st.fixed_dictionaries({"type": st.just("additional_tools"), "role": st.just("developer"),
                           "tools": st.lists(responses_tool, max_size=3)}),
    st.fixed_dictionaries({"type": st.sampled_from(["function_call", "custom_tool_call"]),
                           "call_id": st.text(min_size=1, max_size=6), "name": st.text(min_size=1, max_size=6),
                           "arguments": st.text(max_size=10), "input": st.text(max_size=10)},
                          optional={"namespace": st.text(max_size=6)}),
    st.fixed_dictionaries({"type": st.sampled_from(["function_call_output", "custom_tool_call_output"]),
                           "call_id": st.text(min_size=1, max_size=6), "output": st.one_of(st.text(max_size=10),
                                                                                          st.lists(block, max_size=2))}),
    st.fixed_dictionaries({"type": st.sampled_from(["tool_search_call", "tool_search_output", "mystery_call"]),
                           "execution": st.just("client")},
                          optional={"call_id": st.text(max_size=6), "arguments": json_value,
                                    "tools": st.lists(responses_tool, max_size=2)}),
    st.fixed_dictionaries({"type": st.sampled_from(["reasoning", "item_reference", "web_search_call", "mystery"])},
                          optional={"id": st.text(max_size=6), "summary": st.just([])}))
responses_body = st.fixed_dictionaries({
    "model": st.just("m"), "input": st.one_of(st.text(max_size=20), st.lists(item, min_size=1, max_size=5))},
    optional={"tools": st.lists(responses_tool, max_size=3), "instructions": st.text(max_size=10),
              "stream": st.booleans(), "max_output_tokens": st.integers(1, 50000),
              "tool_choice": st.one_of(st.sampled_from(["auto", "required"]), st.dictionaries(
                  st.sampled_from(["type", "name", "mode"]), scalar))})
chat_body = st.fixed_dictionaries({
    "model": st.just("m"),
    "messages": st.lists(st.fixed_dictionaries({"role": role, "content": content}), min_size=1, max_size=4)},
    optional={"tools": st.lists(st.fixed_dictionaries({"type": st.just("function"), "function": st.fixed_dictionaries(
        {"name": st.text(min_size=1, max_size=8), "parameters": schema})}), max_size=3), "max_tokens": st.integers(1, 900)})

# HYPOTHESIS_EXAMPLES raises the count for a longer hunt (e.g. 2000) outside CI.
FUZZ = settings(max_examples=int(os.environ.get("HYPOTHESIS_EXAMPLES", 60)), deadline=None,
                suppress_health_check=[HealthCheck.too_slow])
CACHE = ResponseCache(MemoryStore())


def _through_everything(api: Api, body: dict) -> None:
    """Decode as the gateway does, then estimate, key, fingerprint and translate for every target."""
    raw = msgspec.json.encode(body)
    try:
        inbound = WIRES[api].decode(raw)
    except GatewayError as exc:
        assert exc.status < 500, exc.message
        return
    assert inbound.prompt_tokens >= 0 and estimate_tokens(body) >= 0 and text_chars(body) >= 0
    CACHE.cache_key("t", "r", inbound.body, deterministic=True)
    prefix_fingerprint(inbound.conversation)
    for target in (Api.CHAT, Api.MESSAGES):
        translator = find(api, frozenset({target}))
        if translator is None:
            continue
        try:
            translated = translator.request(inbound.body, Hints())
            translator.dropped(inbound.body)
        except Untranslatable:
            continue
        msgspec.json.encode(translated)


@FUZZ
@given(messages_body)
def test_messages_shapes_never_crash(body):
    _through_everything(Api.MESSAGES, body)


@FUZZ
@given(responses_body)
# found by this test in CI: a content part whose `type` is a list (unhashable) in a tool output
@example({"model": "m", "input": [{"type": "function_call_output", "call_id": "0", "output": [{"type": []}]}]})
@example({"model": "m", "input": [{"type": ["message"], "role": "user", "content": "hi"}]})
def test_responses_shapes_never_crash(body):
    _through_everything(Api.RESPONSES, body)


@FUZZ
@given(chat_body)
def test_chat_shapes_never_crash(body):
    _through_everything(Api.CHAT, body)

