"""The semantic cache through a real gateway process and the official SDK, at the shipped default
strictness: every kind of near miss is a miss (and reaches the upstream), paraphrases are hits,
entries stay inside their tenant and scope."""

from __future__ import annotations

import time
import uuid

import httpx
import openai
import pytest

from gateway.auth import hash_key
from tests.conftest import write_policy
from tests.gateway_proc import GatewayProcess
from tests.stubs.openai_stub import OpenAIStub, StubControl

KEY_A, KEY_B = "sk-a-" + uuid.uuid4().hex, "sk-b-" + uuid.uuid4().hex

# (cached request, a paraphrase that must hit, {near-miss kind: a request that must miss})
CASES = [
    ("Translate 'good morning' into Spanish.", "How do you say good morning in Spanish?",
     {"language": "Translate 'good morning' into French.", "time": "Translate 'good evening' into Spanish."}),
    ("Is coffee bad for your heart?", "Is coffee bad for the heart?",
     {"antonym": "Is coffee good for your heart?", "negation": "Is coffee not bad for your heart?",
      "content": "Is coffee bad for your liver?"}),
    ("How do I reverse a list in Python?", "How can I reverse a list in Python?",
     {"programming_language": "How do I reverse a list in JavaScript?"}),
    ("Convert 100 degrees Celsius to Fahrenheit.", "Please convert 100 degrees Celsius to Fahrenheit.",
     {"direction": "Convert 100 degrees Fahrenheit to Celsius.", "unit": "Convert 100 degrees Celsius to Kelvin.",
      "number": "Convert 10 degrees Celsius to Fahrenheit."}),
    ("How many kilometers are in five miles?", "How many kilometers are in 5 miles?",
     {"quantity_in_words": "How many kilometers are in six miles?", "unit": "How many meters are in five miles?"}),
    ("What is the capital of France?", "Tell me France's capital city.",
     {"country": "What is the capital of Germany?"}),
    ("Write a birthday message for my friend Sarah.", "Can you write a birthday message for my friend Sarah?",
     {"name": "Write a birthday message for my friend John."}),
    ("Who was the first person to walk on the Moon?", "Who was the 1st person to walk on the Moon?",
     {"ordinal": "Who was the second person to walk on the Moon?"}),
    ("List the primary colors in JSON format.", "Give me the primary colors in JSON format.",
     {"format": "List the primary colors in XML format."}),
    ("What is the distance from Earth to the Moon?", "How far is the Moon from Earth?",
     {"entity": "What is the distance from Earth to Mars?"}),
    ("How do I install Docker on Ubuntu?", "How can I install Docker on Ubuntu?",
     {"tool": "How do I install Docker on Windows?"}),
    ("What should I see on a trip to Rome?", "What should I see on a trip to Rome, please?",
     {"city": "What should I see on a trip to Florence?"}),
]


@pytest.fixture(scope="module")
def upstream():
    with OpenAIStub(StubControl(api_key="sk-upstream")) as stub:
        yield stub


@pytest.fixture(scope="module")
def gw(tmp_path_factory, upstream):
    policy = write_policy(tmp_path_factory.mktemp("semantic"), f"""
        targets:
          oa:
            provider: openai
            model: gpt-4o-mini
            base_url: {upstream.base_url}
            api_key_env: STUB_OPENAI_KEY
        models:
          semantic: {{targets: [oa], cache: {{semantic: {{enabled: true}}}}}}
        tenants:
          a: {{keys: ["sha256:{hash_key(KEY_A)}"]}}
          b: {{keys: ["sha256:{hash_key(KEY_B)}"]}}
    """)
    with GatewayProcess(policy) as proc:
        for _ in range(600):  # the embedding model loads in the background at startup
            if httpx.get(proc.root_url + "/readyz").json()["checks"]["semantic_cache"]["detail"] == "model loaded":
                break
            time.sleep(0.1)
        yield proc


def ask(gw, text: str, system: str, key: str = KEY_A, **headers):
    client = openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0, default_headers=headers or None)
    return client.chat.completions.with_raw_response.create(
        model="semantic", temperature=0,
        messages=[{"role": "system", "content": system}, {"role": "user", "content": text}])


def wait_indexed(gw, text: str, system: str) -> None:
    """The answer is stored (and indexed) after the reply: probe without side effects until it is."""
    for _ in range(100):
        probe = httpx.post(gw.base_url + "/chat/completions", headers={
            "authorization": f"Bearer {KEY_A}", "cache-control": "only-if-cached"}, json={
            "model": "semantic", "temperature": 0,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": text}]})
        if probe.status_code == 200:
            return
        assert probe.status_code == 504 and probe.json()["error"]["code"] == "not_cached"
        time.sleep(0.1)
    raise AssertionError(f"never indexed: {text!r}")


@pytest.mark.parametrize(("cached", "paraphrase", "near_misses"), CASES, ids=[c[0][:40] for c in CASES])
def test_paraphrase_hits_and_every_near_miss_misses(gw, upstream, cached, paraphrase, near_misses):
    system = f"Assistant {uuid.uuid4().hex[:8]}."  # a scope of its own
    assert ask(gw, cached, system).headers["x-gateway-cache"] == "miss"
    wait_indexed(gw, paraphrase, system)
    hit = ask(gw, paraphrase, system)
    assert hit.headers["x-gateway-cache"] == "hit" and hit.headers["x-gateway-target"] == "cache"
    assert float(hit.headers["x-gateway-cache-similarity"]) >= 0.85
    for kind, text in near_misses.items():
        before = len(upstream.control.requests)
        reply = ask(gw, text, system)
        assert reply.headers["x-gateway-cache"] == "miss", f"{kind}: {text!r} was served {cached!r}'s answer"
        assert "x-gateway-cache-similarity" not in reply.headers
        assert len(upstream.control.requests) == before + 1, kind


def test_semantic_entries_stay_in_their_tenant_and_scope(gw):
    system = f"Assistant {uuid.uuid4().hex[:8]}."
    ask(gw, "Who wrote Pride and Prejudice?", system)
    wait_indexed(gw, "Who is the author of Pride and Prejudice?", system)
    assert ask(gw, "Who is the author of Pride and Prejudice?", system, key=KEY_B).headers["x-gateway-cache"] == "miss"
    assert ask(gw, "Who is the author of Pride and Prejudice?", system + " Be terse.").headers["x-gateway-cache"] == \
        "miss"
    assert ask(gw, "Who is the author of Pride and Prejudice?", system).headers["x-gateway-cache"] == "hit"


def test_hit_header_explains_similarity_and_verifier_score(gw):
    system = f"Assistant {uuid.uuid4().hex[:8]}."
    ask(gw, "What is the capital of France?", system)
    wait_indexed(gw, "Tell me France's capital city.", system)
    hit = ask(gw, "Tell me France's capital city.", system)
    assert 0.0 < float(hit.headers["x-gateway-cache-verifier"]) <= 1.0
