"""The import graph runs one way: the bottom layers import nothing of ours, and nothing below the
HTTP service imports `gateway`. Read from the source (every import statement, including ones
inside functions), so a lazy import cannot slip an upward arrow past it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OURS = {"gateway", "state", "cache", "protocols", "providers", "policies", "selfhost_engine", "dashboards"}
# package → our packages it may never import
FORBIDDEN = {
    "protocols": OURS - {"protocols"},  # every wire format, at the bottom
    "state": OURS - {"state"},  # the shared-state layer sits below everything that uses it
    "policies": OURS - {"policies"},
    "cache": {"gateway", "providers", "selfhost_engine", "dashboards"},
    "providers": {"gateway", "dashboards"},
    "selfhost_engine": {"gateway", "state", "cache", "providers", "dashboards"},
}


# Stdlib-only modules any layer may import: the one process-wide lock every model loader holds
# (transformers cannot load two models at once on two threads).
SHARED_LEAVES = {"selfhost_engine.loading"}


def imported_packages(path: Path) -> set[tuple[str, int]]:
    """(top-level package, line) of every absolute import in `path`."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {(alias.name.split(".")[0], node.lineno) for alias in node.names if alias.name not in SHARED_LEAVES}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module not in SHARED_LEAVES:
            found.add((node.module.split(".")[0], node.lineno))
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_import_runs_upward(package):
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, package
    upward = [f"{path.relative_to(ROOT)}:{line} imports {name}"
              for path in files for name, line in sorted(imported_packages(path)) if name in FORBIDDEN[package]]
    assert not upward, upward


def test_shared_leaves_import_nothing_of_ours():
    for leaf in sorted(SHARED_LEAVES):
        path = ROOT / (leaf.replace(".", "/") + ".py")
        assert not {name for name, _ in imported_packages(path)} & OURS, leaf


def test_the_policy_layer_knows_the_bundled_models():
    from policies.schema import BUNDLED
    from selfhost_engine.bundled import NAMES

    assert BUNDLED == NAMES
