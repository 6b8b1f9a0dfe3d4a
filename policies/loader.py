"""Load a YAML policy into typed objects, reporting any mistake as `file:line: key: problem`.

msgspec validates and reports a JSON path (`$.targets.gpt.pricing.input`); we keep YAML's node
marks so that path can be turned back into the line the platform engineer has to fix.
"""

from __future__ import annotations

import re
from pathlib import Path

import msgspec
import yaml

from policies.schema import ModelSpec, Policy, TargetSpec, TenantLimits, TenantSpec

_PATH_PART = re.compile(r"\.([^.\[\]]+)|\[(\d+)\]")


class PolicyError(ValueError):
    """An invalid policy; `str()` is `file:line: key: message`, ready for a log or an HTTP body."""

    def __init__(self, file: str, line: int | None, key: str, message: str) -> None:
        self.file, self.line, self.key, self.message = file, line, key, message
        where = f"{file}:{line}" if line else file
        super().__init__(f"{where}: {key + ': ' if key else ''}{message}")


def _to_python(node: yaml.Node):
    return yaml.constructor.SafeConstructor().construct_document(node)


def _line_of(root: yaml.Node | None, path: str) -> int | None:
    """Walk the composed YAML tree along a msgspec JSON path; return the deepest line found."""
    node, line = root, (root.start_mark.line + 1 if root is not None else None)
    for key, index in _PATH_PART.findall(path.removeprefix("$")):
        if isinstance(node, yaml.MappingNode) and key:
            for k_node, v_node in node.value:
                if k_node.value == key:
                    node, line = v_node, k_node.start_mark.line + 1
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and index:
            i = int(index)
            if i >= len(node.value):
                return line
            node = node.value[i]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def _unknown_key_line(root: yaml.Node | None, path: str, key: str) -> int | None:
    line = _line_of(root, path)
    node = root
    for k, index in _PATH_PART.findall(path.removeprefix("$")):
        if isinstance(node, yaml.MappingNode):
            node = next((v for kn, v in node.value if kn.value == k), None)
        elif isinstance(node, yaml.SequenceNode) and index:
            node = node.value[int(index)] if int(index) < len(node.value) else None
    if isinstance(node, yaml.MappingNode):
        for k_node, _ in node.value:
            if k_node.value == key:
                return k_node.start_mark.line + 1
    return line


def parse_policy(text: str, file: str = "<policy>") -> Policy:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise PolicyError(file, mark.line + 1 if mark else None, "", f"invalid YAML: {getattr(exc, 'problem', exc)}") from None
    if root is None:
        raise PolicyError(file, 1, "", "the policy file is empty")
    data = _to_python(root)
    if not isinstance(data, dict):
        raise PolicyError(file, root.start_mark.line + 1, "", "the policy must be a mapping at the top level")
    for path, value, struct in _entries(data):
        _convert(root, value, struct, path, file)
    policy = _convert(root, data, Policy, "$", file)
    for path, message in policy.reference_errors():
        raise PolicyError(file, _line_of(root, path), path.removeprefix("$."), message)
    return policy


# Sections that are maps of name -> struct: validated entry by entry so an error names the entry
# (msgspec reports map values as `[...]`, which would lose the key the user has to find).
_MAP_SECTIONS = {"targets": TargetSpec, "models": ModelSpec, "tenants": TenantSpec}


def _entries(data: dict):
    for section, struct in _MAP_SECTIONS.items():
        entries = data.get(section)
        if isinstance(entries, dict):
            for name, value in entries.items():
                if struct is TenantSpec and isinstance(value, dict) and isinstance(value.get("model_limits"), dict):
                    for model, limits in value["model_limits"].items():
                        yield f"$.{section}.{name}.model_limits.{model}", limits, TenantLimits
                yield f"$.{section}.{name}", value, struct


def _convert(root: yaml.Node, value, struct, base: str, file: str):
    try:
        return msgspec.convert(value, struct, strict=True)
    except msgspec.ValidationError as exc:
        message = str(exc)
        match = re.search(r" - at `\$([^`]*)`$", message)
        path = base + (match.group(1) if match else "")
        problem = message[: match.start()] if match else message
        unknown = re.match(r"Object contains unknown field `([^`]+)`", problem)
        if unknown:
            line = _unknown_key_line(root, path, unknown.group(1))
            path = f"{path}.{unknown.group(1)}"
        else:
            line = _line_of(root, path)
        raise PolicyError(file, line, path.removeprefix("$").lstrip("."), problem) from None


def load_policy(path: str | Path) -> Policy:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError(str(path), None, "", f"cannot read policy: {exc.strerror or exc}") from None
    return parse_policy(text, str(path))
