"""The policy language: examples validate, mistakes are reported with file:line and key."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from gateway.auth import KeyRing, hash_key
from policies.loader import PolicyError, load_policy, parse_policy
from policies.schema import json_schema

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = [ROOT / "policies" / "default.yaml", *sorted((ROOT / "policies" / "examples").glob("*.yaml"))]

VALID = """\
targets:
  a:
    provider: openai
    model: gpt-4o
    pricing: {input: 1, output: 2}
models:
  m:
    targets: [a]
"""


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_policy_validates(path):
    policy = load_policy(path)
    assert policy.models
    jsonschema.validate(yaml.safe_load(path.read_text()), json_schema())


def test_committed_json_schema_is_current():
    assert json.loads((ROOT / "policies" / "schema.json").read_text()) == json_schema()


@pytest.mark.parametrize(
    "text, line, key, words",
    [
        (VALID.replace("input: 1,", "input: -1,"), 5, "targets.a.pricing.input", ">= 0"),
        (VALID.replace("input: 1,", "inptu: 1,"), 5, "targets.a.pricing.inptu", "unknown field"),
        (VALID.replace("provider: openai", "provider: openia"), 3, "targets.a.provider", "Invalid enum value"),
        (VALID.replace("targets: [a]", "targets: [a, b]"), 8, "models.m.targets[1]", "unknown target 'b'"),
        (VALID.replace("targets: [a]", "targets: []"), 8, "models.m.targets", "length >= 1"),
        (VALID + "default_model: nope\n", 9, "default_model", "not a declared model"),
        (VALID.replace("provider: openai\n    model: gpt-4o", "provider: selfhost\n    model: llama-3\n    embedded: {}"),
         4, "targets.a.model", "without model_dir serves a bundled model: one of smollm2-135m-instruct, tiny-llama"),
        (VALID + "tenants:\n  t:\n    keys: [plaintext-key]\n", 11, "tenants.t.keys[0]", "matching regex"),
        (VALID + "limits:\n  max_body_bytes: 0\n", 10, "limits.max_body_bytes", ">= 1"),
        ("targets: [\n", 2, "", "invalid YAML"),
        ("", 1, "", "empty"),
    ],
)
def test_mistakes_name_file_line_and_key(text, line, key, words):
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "team.yaml")
    error = info.value
    assert (error.file, error.line, error.key) == ("team.yaml", line, key), str(error)
    assert words in error.message
    assert str(error).startswith(f"team.yaml:{line}: ")


def test_check_policy_cli_exit_codes(tmp_path):
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(VALID)
    bad.write_text(VALID.replace("model: gpt-4o", "model: ''"))
    ok = subprocess.run([sys.executable, "-m", "gateway.cli", "check-policy", str(good)], capture_output=True, text=True)
    assert ok.returncode == 0 and "ok (1 targets, 1 models" in ok.stdout
    failed = subprocess.run([sys.executable, "-m", "gateway.cli", "check-policy", str(good), str(bad)],
                            capture_output=True, text=True)
    assert failed.returncode == 1
    assert f"{bad}:4: targets.a.model:" in failed.stderr


def test_serve_refuses_an_invalid_policy(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(VALID.replace("[a]", "[zzz]"))
    result = subprocess.run([sys.executable, "-m", "gateway.cli", "serve", "--policy", str(bad), "--port", "1"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "invalid policy" in result.stderr and "bad.yaml:8" in result.stderr


def test_keys_create_prints_a_key_whose_hash_authenticates(tmp_path):
    result = subprocess.run([sys.executable, "-m", "gateway.cli", "keys", "create", "--tenant", "search"],
                            capture_output=True, text=True, check=True)
    key = result.stdout.split("): ", 1)[1].splitlines()[0].strip()
    snippet = result.stdout.split("paste under the tenant's keys in the policy:\n", 1)[1]
    policy = parse_policy(VALID + snippet)
    assert policy.tenants["search"].keys == [f"sha256:{hash_key(key)}"]
    assert key not in snippet, "only the hash is meant for the policy"
    principal = KeyRing(policy).authenticate({"authorization": f"Bearer {key}"})
    assert principal.tenant == "search"


def test_revoked_keys_stop_working():
    key = "sk-gw-revoke-me"
    text = VALID + f"tenants:\n  t:\n    keys: ['sha256:{hash_key(key)}']\n    revoked_keys: ['{hash_key(key)}']\n"
    from gateway.errors import GatewayError

    with pytest.raises(GatewayError) as info:
        KeyRing(parse_policy(text)).authenticate({"authorization": f"Bearer {key}"})
    assert info.value.status == 401
