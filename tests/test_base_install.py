"""`pip install hybrid-gateway` with no extras is enough to serve the embedded default.

A fresh virtualenv (no system site-packages, no pip) gets the project's wheel, built from the
working tree, and exactly the distributions its base requirements pull in, transitively, as the
wheel's metadata declares them: linked from this test environment instead of downloaded (same
versions; downloading torch would take minutes), so anything the code imports beyond the base
requirements (a test tool, an extra) is missing there, as on a user's machine. `pip check`
proves the set is complete. Then `hybrid-gateway serve` starts from that venv, outside the
repository, and answers chat, `auto` and embeddings. Costs ~30-40 s, mostly the server's start.
"""

from __future__ import annotations

import email
import importlib.metadata as md
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import openai
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.bundled_model import seeded_cache, start_serve, stop
from tests.gateway_proc import ROOT

# the top-level packages the wheel ships, as pyproject.toml lists them (`include = ["gateway*", ...]`)
PACKAGES = [pattern.rstrip("*") for pattern in
            tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]]


def build_wheel(out: Path) -> Path:
    """The project's wheel, built from a copy of its sources (the build leaves the tree untouched)."""
    src = out / "src"
    src.mkdir(parents=True)
    shutil.copy(ROOT / "pyproject.toml", src)
    for package in PACKAGES:
        shutil.copytree(ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                    "-w", str(out / "dist"), str(src)], check=True, timeout=120)
    return next((out / "dist").glob("hybrid_gateway-*.whl"))


def base_requirements(wheel: Path) -> list[Requirement]:
    with zipfile.ZipFile(wheel) as archive:
        meta = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        message = email.message_from_bytes(archive.read(meta))
    return [Requirement(r) for r in message.get_all("Requires-Dist") or []]


def closure(requirements: list[Requirement]) -> dict[str, md.Distribution]:
    """The installed distributions the requirements pull in (no extras), each checked against its specifier."""
    installed = {canonicalize_name(d.metadata["Name"]): d for d in md.distributions()}
    found: dict[str, md.Distribution] = {}
    todo = list(requirements)
    while todo:
        requirement = todo.pop()
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        name = canonicalize_name(requirement.name)
        assert name in installed, f"base requirement {requirement} is not installed here (make setup)"
        dist = installed[name]
        assert requirement.specifier.contains(dist.version, prereleases=True), f"{requirement}: {dist.version} here"
        if name not in found:
            found[name] = dist
            todo += [Requirement(r) for r in dist.requires or []]
    return found


def link(dists: dict[str, md.Distribution], site: Path) -> None:
    """Make `dists` importable in `site`: a top-level folder all of whose owners are in `dists` is
    linked whole; one shared with other distributions (namespace packages) file by file."""
    here = Path(sysconfig.get_paths()["purelib"])
    owners: dict[str, set[str]] = {}
    linked: set[str] = set()
    for dist in md.distributions(path=[str(here)]):
        name = canonicalize_name(dist.metadata["Name"])
        for top in {f.parts[0] for f in dist.files or []}:
            owners.setdefault(top, set()).add(name)
    for name, dist in dists.items():
        assert dist.files is not None, f"{name} has no RECORD: cannot tell its files"
        for f in dist.files:
            top = f.parts[0]
            if top == ".." or top in linked:
                continue
            if owners[top] <= dists.keys():
                (site / top).symlink_to(here / top)
                linked.add(top)
            elif not (site / f).exists():
                (site / f).parent.mkdir(parents=True, exist_ok=True)
                (site / f).symlink_to(here / f)


def test_a_base_install_serves_the_embedded_default(tmp_path):
    wheel = build_wheel(tmp_path / "build")
    requirements = base_requirements(wheel)
    assert not any(canonicalize_name(r.name) == "pytest" for r in requirements if r.marker is None)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    python = venv / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", str(python)]
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "-q", str(wheel)], check=True, timeout=120)
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    link(closure(requirements), site)
    checked = subprocess.run([*pip, "check"], capture_output=True, text=True, timeout=120)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # really isolated: the test tools and this checkout are not importable there
    isolated = subprocess.run([str(python), "-c", "import gateway, pytest"], capture_output=True, text=True,
                              cwd=tmp_path, env={"PATH": os.environ["PATH"]})
    assert "No module named 'pytest'" in isolated.stderr, isolated.stderr

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "GATEWAY_DEV_KEY")}
    env.update(XDG_CACHE_HOME=str(seeded_cache(tmp_path / "cache")), PYTHONUNBUFFERED="1")
    log = tmp_path / "serve.log"
    proc, port, key = start_serve([str(venv / "bin" / "hybrid-gateway")], env, log, cwd=tmp_path)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0)
        answer = client.chat.completions.create(
            model="auto", messages=[{"role": "user", "content": "What is the capital of France?"}], max_tokens=16,
            temperature=0)
        assert "Paris" in answer.choices[0].message.content
        vectors = client.embeddings.create(model="local-embed", input="good morning")
        assert len(vectors.data[0].embedding) == 384
    finally:
        stop(proc)
