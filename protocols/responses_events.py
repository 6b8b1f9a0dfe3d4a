"""The OpenAI Responses API's stream, built one event at a time, with the final response object.

One builder serves both places that must produce the documented sequence: replaying a stored
or cached response as a stream (`replay_events`), and translating another protocol's stream as
it arrives (protocols/responses_chat.py). The order is the one OpenAI sends and the official SDKs
check (ids stable from `output_item.added` to `output_item.done` and into `response.completed`;
every content event after its item's `added`):

    response.created, response.in_progress,
    per output item: response.output_item.added,
        message: response.content_part.added, response.output_text.delta…, response.output_text.done,
                 response.content_part.done (refusals: response.refusal.delta / .done)
        function_call: response.function_call_arguments.delta…, response.function_call_arguments.done
        custom_tool_call: response.custom_tool_call_input.delta…, response.custom_tool_call_input.done
        reasoning: response.reasoning_summary_part.added, response.reasoning_summary_text.delta / .done,
                   response.reasoning_summary_part.done
    response.output_item.done, then response.completed (or response.incomplete / response.failed).

Every event carries a `sequence_number` counting from 0.
"""

from __future__ import annotations

import copy
import time
import uuid
from typing import Any

from protocols.text import split_text

# Terminal event per final status.
TERMINAL = {"completed": "response.completed", "incomplete": "response.incomplete", "failed": "response.failed"}


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def response_object(model: str, *, id: str | None = None, created_at: int | None = None,
                    echo: dict[str, Any] | None = None) -> dict[str, Any]:
    """A `response` object in progress; `echo` carries the request's parameters the object repeats."""
    response: dict[str, Any] = {
        "id": id or new_id("resp"), "object": "response",
        "created_at": created_at if created_at is not None else int(time.time()),
        "status": "in_progress", "background": False, "error": None, "incomplete_details": None,
        "instructions": None, "max_output_tokens": None, "max_tool_calls": None, "model": model, "output": [],
        "parallel_tool_calls": True, "previous_response_id": None, "reasoning": {"effort": None, "summary": None},
        "service_tier": "default", "store": True, "temperature": 1.0, "text": {"format": {"type": "text"}},
        "tool_choice": "auto", "tools": [], "top_logprobs": 0, "top_p": 1.0, "truncation": "disabled",
        "usage": None, "user": None, "metadata": {},
    }
    response.update(echo or {})
    return response


class Builder:
    """Emits the events of one response and keeps its output, so the terminal event's response
    object is exactly what the deltas added up to."""

    def __init__(self, response: dict[str, Any]) -> None:
        self.response = response
        self.seq = 0
        self.output: list[dict[str, Any]] = []

    def event(self, type: str, **fields: Any) -> dict[str, Any]:
        event = {"type": type, "sequence_number": self.seq, **fields}
        self.seq += 1
        return event

    def _snapshot(self) -> dict[str, Any]:
        return {**self.response, "output": copy.deepcopy(self.output)}

    def start(self) -> list[dict[str, Any]]:
        snapshot = {**self.response, "status": "in_progress", "output": [], "usage": None}
        return [self.event("response.created", response=snapshot),
                self.event("response.in_progress", response=dict(snapshot))]

    # -- items ----------------------------------------------------------------------------------

    def add_item(self, item: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """Open an output item (its in-progress shape); returns its index and the event."""
        index = len(self.output)
        self.output.append(item)
        return index, self.event("response.output_item.added", output_index=index, item=copy.deepcopy(item))

    def done_item(self, index: int, final: dict[str, Any] | None = None) -> dict[str, Any]:
        item = self.output[index]
        if final is not None:
            item.clear()
            item.update(final)
        item["status"] = item.get("status") if item.get("status") not in (None, "in_progress") else "completed"
        return self.event("response.output_item.done", output_index=index, item=copy.deepcopy(item))

    # -- messages ---------------------------------------------------------------------------------

    def open_message(self, id: str | None = None, role: str = "assistant") -> tuple[int, dict[str, Any]]:
        return self.add_item({"id": id or new_id("msg"), "type": "message", "status": "in_progress", "role": role,
                              "content": []})

    def open_part(self, index: int, kind: str = "output_text") -> dict[str, Any]:
        item = self.output[index]
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []} if kind == "output_text" \
            else {"type": "refusal", "refusal": ""}
        item["content"].append(part)
        return self.event("response.content_part.added", item_id=item["id"], output_index=index,
                          content_index=len(item["content"]) - 1, part=dict(part))

    def part_delta(self, index: int, delta: str) -> dict[str, Any]:
        item = self.output[index]
        content_index = len(item["content"]) - 1
        part = item["content"][content_index]
        if part["type"] == "refusal":
            part["refusal"] += delta
            return self.event("response.refusal.delta", item_id=item["id"], output_index=index,
                              content_index=content_index, delta=delta)
        part["text"] += delta
        return self.event("response.output_text.delta", item_id=item["id"], output_index=index,
                          content_index=content_index, delta=delta, logprobs=[])

    def close_part(self, index: int, final: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        item = self.output[index]
        content_index = len(item["content"]) - 1
        if final is not None:
            item["content"][content_index] = final
        part = item["content"][content_index]
        where = {"item_id": item["id"], "output_index": index, "content_index": content_index}
        if part["type"] == "refusal":
            done = self.event("response.refusal.done", **where, refusal=part["refusal"])
        else:
            done = self.event("response.output_text.done", **where, text=part["text"], logprobs=[])
        return [done, self.event("response.content_part.done", **where, part=copy.deepcopy(part))]

    # -- function calls ---------------------------------------------------------------------------

    def open_call(self, call_id: str, name: str, id: str | None = None) -> tuple[int, dict[str, Any]]:
        return self.add_item({"id": id or new_id("fc"), "type": "function_call", "status": "in_progress",
                              "arguments": "", "call_id": call_id, "name": name})

    def call_delta(self, index: int, delta: str) -> dict[str, Any]:
        item = self.output[index]
        item["arguments"] += delta
        return self.event("response.function_call_arguments.delta", item_id=item["id"], output_index=index,
                          delta=delta)

    def close_call(self, index: int) -> list[dict[str, Any]]:
        item = self.output[index]
        return [self.event("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                           name=item["name"], arguments=item["arguments"]),
                self.done_item(index)]

    # -- custom tool calls (free-form input) ----------------------------------------------------------

    def open_custom_call(self, call_id: str, name: str, id: str | None = None) -> tuple[int, dict[str, Any]]:
        return self.add_item({"id": id or new_id("ctc"), "type": "custom_tool_call", "status": "in_progress",
                              "call_id": call_id, "name": name, "input": ""})

    def custom_delta(self, index: int, delta: str) -> dict[str, Any]:
        item = self.output[index]
        item["input"] += delta
        return self.event("response.custom_tool_call_input.delta", item_id=item["id"], output_index=index, delta=delta)

    def close_custom_call(self, index: int) -> list[dict[str, Any]]:
        item = self.output[index]
        return [self.event("response.custom_tool_call_input.done", item_id=item["id"], output_index=index,
                           input=item["input"]),
                self.done_item(index)]

    # -- the end ------------------------------------------------------------------------------------

    def finish(self, status: str = "completed", *, usage: dict[str, Any] | None = None,
               incomplete_reason: str | None = None, error: dict[str, Any] | None = None) -> dict[str, Any]:
        self.response["status"] = status
        self.response["usage"] = usage
        if incomplete_reason is not None:
            self.response["incomplete_details"] = {"reason": incomplete_reason}
        if error is not None:
            self.response["error"] = error
        return self.event(TERMINAL.get(status, "response.completed"), response=self._snapshot())

    def final(self) -> dict[str, Any]:
        return self._snapshot()


def usage_object(prompt: int, completion: int, cached: int = 0, reasoning: int = 0) -> dict[str, Any]:
    """The Responses API's `usage` (input includes cached, output includes reasoning)."""
    return {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": cached},
            "output_tokens": completion, "output_tokens_details": {"reasoning_tokens": reasoning},
            "total_tokens": prompt + completion}


def _replay_item(builder: Builder, item: dict[str, Any]) -> list[dict[str, Any]]:
    kind = item.get("type")
    if kind == "message":
        index, added = builder.add_item({**item, "status": "in_progress", "content": []})
        events = [added]
        for part in item.get("content") or []:
            part_kind = "refusal" if part.get("type") == "refusal" else "output_text"
            events.append(builder.open_part(index, part_kind))
            for piece in split_text(part.get("refusal" if part_kind == "refusal" else "text") or ""):
                events.append(builder.part_delta(index, piece))
            events.extend(builder.close_part(index, final=dict(part)))
        events.append(builder.done_item(index, final=dict(item)))
        return events
    if kind == "function_call":
        index, added = builder.add_item({**item, "status": "in_progress", "arguments": ""})
        events = [added]
        arguments = item.get("arguments") or ""
        events.extend(builder.call_delta(index, arguments[i:i + 24]) for i in range(0, len(arguments), 24))
        events.extend(builder.close_call(index))
        builder.output[index].update(item)
        return events
    if kind == "custom_tool_call":
        index, added = builder.add_item({**item, "status": "in_progress", "input": ""})
        events = [added]
        text = item.get("input") or ""
        events.extend(builder.custom_delta(index, piece) for piece in split_text(text))
        events.extend(builder.close_custom_call(index))
        builder.output[index].update(item)
        return events
    if kind == "reasoning":
        index, added = builder.add_item({**item, "summary": []})
        events = [added]
        for number, part in enumerate(item.get("summary") or []):
            where = {"item_id": item.get("id"), "output_index": index, "summary_index": number}
            text = part.get("text") or ""
            events.append(builder.event("response.reasoning_summary_part.added", **where,
                                        part={"type": "summary_text", "text": ""}))
            events.extend(builder.event("response.reasoning_summary_text.delta", **where, delta=piece)
                          for piece in split_text(text))
            events.append(builder.event("response.reasoning_summary_text.done", **where, text=text))
            events.append(builder.event("response.reasoning_summary_part.done", **where, part=dict(part)))
        events.append(builder.done_item(index, final=dict(item)))
        return events
    index, added = builder.add_item(dict(item))  # hosted tool calls and the like: as they are
    return [added, builder.done_item(index, final=dict(item))]


def replay_events(response: dict[str, Any]) -> list[dict[str, Any]]:
    """A finished response object as the full event sequence a live stream would have sent."""
    final = {k: v for k, v in response.items() if k != "output"}
    builder = Builder(final)
    events = builder.start()
    for item in response.get("output") or []:
        events.extend(_replay_item(builder, item))
    status = response.get("status") or "completed"
    terminal = builder.event(TERMINAL.get(status, "response.completed"),
                             response={**final, "status": status, "output": copy.deepcopy(response.get("output") or [])})
    events.append(terminal)
    return events
