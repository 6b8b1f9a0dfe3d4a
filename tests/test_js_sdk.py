"""JavaScript users: the official `openai` npm package against a real gateway process."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

JS = Path(__file__).parent / "js"


@pytest.fixture(scope="module")
def node_sdk():
    if shutil.which("node") is None:
        pytest.skip("node is not installed")
    if not (JS / "node_modules" / "openai").exists():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=JS, check=True, timeout=300)
    return JS / "sdk_check.mjs"


def test_openai_npm_package_works_unchanged(node_sdk, gateway, openai_stub):
    result = subprocess.run(["node", str(node_sdk), gateway.base_url, gateway.dev_key, "gpt-test"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["text"] == "echo: hello from javascript"
    assert report["usage"]["completion_tokens"] == 4
    assert report["streamed"] == report["text"]
    assert report["streamUsage"]["total_tokens"] == report["usage"]["total_tokens"]
    assert report["toolName"] == "lookup" and report["afterTool"] == "tool said: 42"
    assert report["json"] == {"echo": "hello from javascript"}
    errors = report["errors"]
    assert errors["unknownModel"] == {"cls": "NotFoundError", "status": 404, "code": "model_not_found"}
    assert errors["badKey"]["cls"] == "AuthenticationError" and errors["badKey"]["status"] == 401
    assert errors["badRequest"]["cls"] == "BadRequestError" and errors["badRequest"]["status"] == 400
