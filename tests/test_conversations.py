"""Routing for conversations and agents, below HTTP: what each protocol's request asks
(protocols/turns.py), scoring by the latest user turn, and the per-conversation decision
(Router.hold, gateway/routing/sticky.py) over a real MemoryStore."""

from __future__ import annotations

import asyncio

from cache.store import MemoryStore
from gateway.auth import Principal
from gateway.router import Router
from gateway.routing.sticky import Stickiness, thread_key
from policies.loader import parse_policy
from policies.schema import TenantSpec
from protocols.api import Api
from protocols.turns import chat_turns, turns_of
from tests import agent_shapes as shapes

EASY_ASK = "Add a friendly one-line greeting to the top of README.md"
HARD_ASK = ("Refactor the scheduler to support preemption with priority classes; design the data structures, "
            "prove it never starves a sequence, and write tests.")

POLICY = """
version: 2
targets:
  frontier: {provider: selfhost, model: big, base_url: "http://127.0.0.1:9/v1", pricing: {input: 3, output: 15}}
  cheap: {provider: selfhost, model: small, base_url: "http://127.0.0.1:9/v1", pricing: {input: 0.1, output: 0.4},
          apis: [openai.chat, anthropic.messages, openai.responses]}
  canary: {provider: selfhost, model: big2, base_url: "http://127.0.0.1:9/v1", pricing: {input: 3, output: 15}}
models:
  fast: {targets: [cheap]}
default_model: fast
routes:
  - name: auto-hard
    match: {models: [auto], difficulty: {hard: true}}
    targets: [{target: frontier, weight: 50}, {target: canary, weight: 50}]
    fallbacks: [cheap]
  - name: auto-easy
    match: {models: [auto], difficulty: {hard: false}}
    targets: [{target: cheap}]
    fallbacks: [frontier]
"""


class Upstream:
    """Stands for any target: the router only reads which protocols it speaks (it never calls)."""

    apis = frozenset(Api)


def _router(text: str = POLICY) -> Router:
    policy = parse_policy(text)
    return Router(policy, {name: Upstream() for name in policy.targets})  # type: ignore[misc]


PRINCIPAL = Principal("acme", TenantSpec(), "")


async def _decide(router: Router, sticky: Stickiness, api: Api, body: dict, *, answered: bool = True,
                  conversation: dict | None = None, prompt_tokens: int = 100):
    """One request's routing as the pipeline runs it: plan, hold the conversation's decision, and
    (answered) keep it with `served`, as the pipeline does in the background."""
    turns = turns_of(api, body)
    fresh = await router.plan("auto", PRINCIPAL, body if conversation is None else conversation, {}, prompt_tokens,
                              api, turns)
    held = await sticky.hold(router, fresh, turns, "acme", api)
    if answered:
        await sticky.served(held, held.candidates[0].name)
    return held


def test_claude_code_turns_read_the_ask_not_the_agent_around_it():
    start = shapes.claude_code_start(EASY_ASK)
    first = turns_of(Api.MESSAGES, start)
    assert first.ask == EASY_ASK  # not the system prompt, the tool schemas or the <system-reminder> blocks
    assert (first.user_turns, first.tool_results, first.tool_loop, first.tools) == (1, 0, False, len(shapes.CLAUDE_TOOLS))
    assert "_session_" in first.user_id
    loop = shapes.claude_code_tool_turn(start, "Read", "/home/dev/project/README.md", shapes.HARD_LOOKING_OUTPUT)
    looped = turns_of(Api.MESSAGES, loop)
    assert looped.ask == EASY_ASK and looped.tool_loop and looped.tool_results == 1
    assert looped.opening == first.opening  # one conversation across its tool loop
    later = shapes.claude_code_user_turn(loop, "Fixed.", HARD_ASK)
    assert turns_of(Api.MESSAGES, later).ask == HARD_ASK and not turns_of(Api.MESSAGES, later).tool_loop
    assert turns_of(Api.MESSAGES, later).opening == first.opening
    other = turns_of(Api.MESSAGES, shapes.claude_code_start(HARD_ASK))
    assert other.opening != first.opening


def test_codex_turns_skip_developer_agents_md_and_environment_context():
    start = shapes.codex_start(EASY_ASK, conversation="conv-1")
    first = turns_of(Api.RESPONSES, start)
    assert first.ask == EASY_ASK and first.thread_id == "conv-1" and first.tools == len(shapes.CODEX_TOOLS)
    loop = shapes.codex_tool_turn(start, ["rg", "teh"], shapes.HARD_LOOKING_OUTPUT)
    looped = turns_of(Api.RESPONSES, loop)
    assert looped.ask == EASY_ASK and looped.tool_loop and looped.opening == first.opening
    later = turns_of(Api.RESPONSES, shapes.codex_user_turn(loop, "Done.", HARD_ASK))
    assert later.ask == HARD_ASK and not later.tool_loop and later.assistant_turns == 1


def test_chat_turns_and_odd_input():
    body = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
                         {"role": "assistant", "content": None, "tool_calls": []},
                         {"role": "tool", "tool_call_id": "c", "content": "42"}]}
    turns = chat_turns(body)
    assert (turns.ask, turns.tool_loop, turns.tool_results, turns.user_turns) == ("hi", True, 1, 1)
    assert chat_turns({"messages": [None, 3, {"role": "user", "content": None}]}).ask == ""
    # A user who pastes markup still asks something; a message that is only injected context does not.
    assert chat_turns({"messages": [{"role": "user", "content": "<div>hello</div>"}]}).ask == "<div>hello</div>"
    only = chat_turns({"messages": [{"role": "user", "content": "<system-reminder>x</system-reminder>"}]})
    assert only.user_turns == 0 and only.opening == ""


def _plan(router: Router, api: Api, body: dict, tokens: int = 20_000):
    return asyncio.run(router.plan("auto", PRINCIPAL, {"messages": []}, {}, tokens, api, turns_of(api, body)))


def test_agent_requests_are_scored_by_what_the_user_asked():
    """A 19k-character system prompt, 22 tool schemas and a traceback in a tool result used to make
    every agent request "hard"; the score now reads the ask (plus conversation facts)."""
    router = _router()
    start = shapes.claude_code_start(EASY_ASK)
    easy = _plan(router, Api.MESSAGES, start)
    assert easy.route_name == "auto-easy" and easy.difficulty.hard is False, easy.difficulty.header()
    bare = asyncio.run(router.difficulty(chat_turns({"messages": [{"role": "user", "content": EASY_ASK}]}), 10))
    assert abs(easy.difficulty.score - bare.score) < 0.02
    loop = shapes.claude_code_tool_turn(start, "Read", "README.md", shapes.HARD_LOOKING_OUTPUT)
    assert _plan(router, Api.MESSAGES, loop).route_name == "auto-easy"
    assert _plan(router, Api.MESSAGES, shapes.claude_code_start(HARD_ASK)).route_name == "auto-hard"
    codex = shapes.codex_start(EASY_ASK)
    assert _plan(router, Api.RESPONSES, codex).route_name == "auto-easy"
    assert _plan(router, Api.RESPONSES, shapes.codex_start(HARD_ASK)).route_name == "auto-hard"


def test_hold_keeps_escalates_and_never_changes_inside_a_tool_loop():
    router = _router()
    store = MemoryStore()
    sticky = Stickiness(store, ttl=lambda: 60.0)

    def run(body):
        return _decide(router, sticky, Api.MESSAGES, body, conversation={"messages": []}, prompt_tokens=20_000)

    start = shapes.claude_code_start(HARD_ASK)
    first = asyncio.run(run(start))
    assert first.sticky == "new" and first.route_name == "auto-hard"
    chosen = first.candidates[0].name  # frontier or canary: the canary pick is kept too
    later = start
    for i in range(6):  # easy on their own: kept on the conversation's target, never downgraded
        later = shapes.claude_code_user_turn(later, "Done.", f"thanks! ({i})")
        kept = asyncio.run(run(later))
        assert (kept.sticky, kept.route_name, kept.candidates[0].name) == ("kept", "auto-hard", chosen)
        assert [c.name for c in kept.candidates][1:] == [n for n in ("frontier", "canary", "cheap") if n != chosen]

    cheap_start = shapes.claude_code_start(EASY_ASK)
    assert asyncio.run(run(cheap_start)).candidates[0].name == "cheap"
    # Inside a tool loop the conversation stays on its target, whatever a turn looks like.
    loop = shapes.claude_code_tool_turn(cheap_start, "Bash", "make test", shapes.HARD_LOOKING_OUTPUT)
    assert asyncio.run(run(loop)).candidates[0].name == "cheap"
    # A new user turn whose own score picks a stronger target escalates, and the escalation is kept.
    harder = shapes.claude_code_user_turn(loop, "Fixed the typo.", HARD_ASK)
    up = asyncio.run(run(harder))
    assert up.sticky == "escalated" and up.candidates[0].name in ("frontier", "canary")
    after = asyncio.run(run(shapes.claude_code_user_turn(harder, "Done.", "thanks!")))
    assert after.sticky == "kept" and after.candidates[0].name == up.candidates[0].name


def test_failover_moves_the_conversation_and_sticky_false_turns_it_off():
    router = _router()
    sticky = Stickiness(MemoryStore(), ttl=lambda: 60.0)

    def run(router, body):
        return _decide(router, sticky, Api.CHAT, body)

    body = {"messages": [{"role": "user", "content": HARD_ASK}]}
    first = asyncio.run(run(router, body))
    asyncio.run(sticky.served(first, "cheap"))  # its target was down: the fallback answered
    body["messages"] += [{"role": "assistant", "content": "ok"}, {"role": "user", "content": "and now?"}]
    moved = asyncio.run(run(router, body))
    assert moved.sticky == "kept" and [c.name for c in moved.candidates][0] == "cheap"
    off = _router(POLICY.replace("    fallbacks: [cheap]", "    fallbacks: [cheap]\n    sticky: false")
                  .replace("    fallbacks: [frontier]", "    fallbacks: [frontier]\n    sticky: false"))
    decided = asyncio.run(run(off, body))
    assert decided.sticky == "" and decided.thread is None
    # a reload that drains the kept target from the route (weight 0): the conversation is decided afresh
    drained = _router(POLICY.replace("{target: frontier, weight: 50}, {target: canary, weight: 50}",
                                     "{target: frontier, weight: 0}, {target: canary, weight: 100}"))
    pinned = asyncio.run(run(router, {"messages": [{"role": "user", "content": HARD_ASK + " (b)"}]}))
    asyncio.run(sticky.served(pinned, "frontier"))
    later = {"messages": [{"role": "user", "content": HARD_ASK + " (b)"}, {"role": "assistant", "content": "ok"},
                          {"role": "user", "content": "and now?"}]}
    assert asyncio.run(run(router, later)).candidates[0].name == "frontier"
    again = asyncio.run(run(drained, later))
    assert again.sticky == "new" and again.candidates[0].name != "frontier"  # decided on its own score


def test_keys_and_expiry():
    start = turns_of(Api.MESSAGES, shapes.claude_code_start(EASY_ASK, session="s1"))
    same_text_other_session = turns_of(Api.MESSAGES, shapes.claude_code_start(EASY_ASK, session="s2"))
    assert thread_key("acme", "auto", start) != thread_key("acme", "auto", same_text_other_session)
    assert thread_key("acme", "auto", start) != thread_key("other", "auto", start)
    assert thread_key("acme", "auto", turns_of(Api.CHAT, {"messages": []})) is None

    now = [1000.0]
    store = MemoryStore(clock=lambda: now[0])
    sticky = Stickiness(store, ttl=lambda: 60.0, clock=lambda: now[0])
    router = _router()

    def run(body):
        return _decide(router, sticky, Api.CHAT, body)

    body = {"messages": [{"role": "user", "content": HARD_ASK}]}
    asyncio.run(run(body))
    body["messages"] += [{"role": "assistant", "content": "ok"},
                         {"role": "user", "content": "Great, thanks. Write a short friendly thank-you note for the team."}]
    assert asyncio.run(run(body)).sticky == "kept"
    now[0] += 61  # past the TTL: the conversation is decided afresh (and the easy turn goes cheap)
    again = asyncio.run(run(body))
    assert again.sticky == "new" and again.candidates[0].name == "cheap"


def test_hold_writes_nothing_served_keeps_the_decision():
    """`hold` writes nothing (no store round trip on the request path); `served`, which the
    pipeline runs in the background, keeps the decision."""
    router = _router()
    store = MemoryStore()
    sticky = Stickiness(store, ttl=lambda: 60.0)

    def hold(body):
        return _decide(router, sticky, Api.CHAT, body, answered=False)

    opening = {"messages": [{"role": "user", "content": HARD_ASK + " (unanswered)"}]}
    first = asyncio.run(hold(opening))
    assert first.sticky == "new" and first.pin_due and asyncio.run(store.get(first.thread)) is None
    later = {"messages": opening["messages"] + [{"role": "assistant", "content": "ok"},
                                               {"role": "user", "content": "thanks!"}]}
    assert asyncio.run(hold(later)).sticky == "new"  # nothing was kept: decided afresh
    asyncio.run(sticky.served(first, first.candidates[0].name))
    kept = asyncio.run(hold(later))
    assert kept.sticky == "kept" and not kept.pin_due and kept.candidates[0].name == first.candidates[0].name
