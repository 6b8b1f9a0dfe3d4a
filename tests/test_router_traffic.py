"""The router's real-traffic data: the ShareGPT loader (reserved partition never yielded, the
truncated file read record by record, first and later turns), the committed labels and reads,
and the shipped model calibrated on that traffic."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from gateway.routing import sharegpt
from gateway.routing.corpus import read_jsonl
from gateway.routing.model import DEFAULT_MODEL, LearnedModel, operating_point


def _ids(reserved: bool, n: int, part: int = 0) -> list[str]:
    """Conversation ids (`<x>_<part>`) on either side of the partition rule."""
    out, i = [], 0
    while len(out) < n:
        cid = f"conv{i}_{part}"
        if (hashlib.sha256(cid.encode()).hexdigest()[0] in "0123") == reserved:
            out.append(cid)
        i += 1
    return out


def _conversation(cid: str, *turns: str) -> dict:
    return {"id": cid, "conversations": [{"from": "human" if i % 2 == 0 else "gpt", "value": t}
                                         for i, t in enumerate(turns)]}


@pytest.fixture
def slice_file(tmp_path: Path) -> tuple[Path, list[str], list[str]]:
    allowed, reserved = _ids(False, 6), _ids(True, 2)
    records = [
        _conversation(allowed[0], "How do I reverse a list in Python?", "Use reversed().",
                      "Now explain why slicing with [::-1] copies the list.", "It builds a new list."),
        _conversation(reserved[0], "What is the capital of France and why is it there?", "Paris."),
        _conversation(allowed[1], "hi", "Hello!"),  # too short
        _conversation(allowed[2], "Bonjour, pouvez-vous m'aider à écrire une lettre de motivation ?", "Oui."),
        _conversation(allowed[3], "how do i reverse a   list in python?", "Same question, other spacing."),
        _conversation(_ids(False, 1, part=1)[0], "Continue the story from where you stopped, please.", "..."),
        _conversation(reserved[1], "Write a haiku about the sea and the wind.", "Waves..."),
        _conversation(allowed[5], "Write a short poem about autumn leaves for my class.", "Leaves fall."),
    ]
    text = "[\n" + ",\n".join(json.dumps(r) for r in records) + ',\n  {"id": "cut_0", "conversations": [{"from": "hu'
    path = tmp_path / "sharegpt.json"
    path.write_text(text, encoding="utf-8")
    return path, allowed, reserved


def test_loader_never_yields_the_reserved_partition_and_reads_past_the_cut(slice_file):
    path, allowed, reserved = slice_file
    ids = [r["id"] for r in sharegpt.iter_records(path)]
    assert not set(ids) & set(reserved), "reserved conversations are never yielded"
    assert "cut_0" not in ids and len(ids) == 6  # the truncated tail ends the read cleanly
    assert all(sharegpt.allowed(i) for i in ids)


def test_first_and_later_turns_apply_the_filters(slice_file):
    path, allowed, _ = slice_file
    first = list(sharegpt.first_turns(sharegpt.iter_records(path)))
    # short, French, the spacing-only duplicate and the `_1` continuation are all left out
    assert [t.key for t in first] == [f"{allowed[0]}#0", f"{allowed[5]}#0"]
    later = list(sharegpt.later_turns(sharegpt.iter_records(path)))
    assert [t.key for t in later] == [f"{allowed[0]}#2"]
    assert later[0].history == (("user", "How do I reverse a list in Python?"), ("assistant", "Use reversed()."))
    assert sharegpt.is_english("Explain how a hash map works.") and not sharegpt.is_english("Erkläre mir bitte Hashmaps, grüße.")


def test_lookup_finds_labelled_turns_and_refuses_reserved_keys(slice_file):
    path, allowed, reserved = slice_file
    found = sharegpt.lookup({f"{allowed[0]}#2", f"{allowed[5]}#0", f"{reserved[1]}#0"}, path)
    assert set(found) == {f"{allowed[0]}#2", f"{allowed[5]}#0"}
    assert found[f"{allowed[0]}#2"].text.startswith("Now explain why slicing")
    item = found[f"{allowed[0]}#2"]
    assert not item.is_first and found[f"{allowed[5]}#0"].is_first


def test_committed_labels_are_three_blind_reads_of_the_allowed_partition():
    labels = read_jsonl(sharegpt.LABELS)
    reads = read_jsonl(sharegpt.READS)
    assert all(sharegpt.allowed(row["key"].split("#")[0]) for row in labels + reads)
    assert all(set(row) == {"key", "reader", "label", "confidence"} for row in reads), "ids and labels, never text"
    by_key: dict[str, list[str]] = {}
    for row in reads:
        by_key.setdefault(row["key"], []).append(row["label"])
    assert all(len(v) == 3 for v in by_key.values())
    first = [r for r in labels if r["key"].endswith("#0")]
    assert len(first) >= 3000 and len(labels) - len(first) >= 500
    for row in labels:  # the majority rule stated in PROVENANCE.md
        votes = [v for v in by_key[row["key"]] if v != "skip"]
        assert votes.count(row["label"]) >= 2 and votes.count(row["label"]) > len(votes) - votes.count(row["label"])
    splits = {}
    for row in labels:  # a conversation's turns share one split
        splits.setdefault(row["key"].split("#")[0], set()).add(row["split"])
    assert all(len(s) == 1 for s in splits.values())


def test_shipped_model_is_calibrated_on_the_real_traffic_calibration_split():
    model = LearnedModel.load(DEFAULT_MODEL)
    calibration_rows = [r for r in read_jsonl(sharegpt.LABELS) if r["split"] == "calibration"]
    assert model.report["data"]["labels"] == sharegpt.LABELS.name
    assert len(model.calib_labels) == len(calibration_rows)
    assert int(model.calib_labels.sum()) == sum(r["label"] == "hard" for r in calibration_rows)
    for recall in (0.90, 0.95, 0.99):
        cal = model.calibration(hard_recall=recall)
        share, got = operating_point(model.calib_scores, model.calib_labels, cal.threshold)
        assert got >= recall and 0 < share < 1
    assert np.isfinite(model.w_text).all()


def test_missing_model_files_fall_back_or_fail_as_documented(tmp_path, monkeypatch, caplog):
    """A model file a policy names must load (an error at start); the shipped one missing from the
    package falls back to the heuristic scorer with one log line; a missing fine-tuned encoder
    falls back per request, with the header saying so, never refusing a request."""
    from gateway.routing import embedders, learned, model as model_module
    from gateway.routing.features import ask_of
    from gateway.routing.model import ModelError
    from gateway.routing.scorer import DifficultyScorer
    from policies.schema import DifficultySpec

    with pytest.raises(ModelError):
        learned.build_scorer(DifficultySpec(model=str(tmp_path / "missing.npz")))
    monkeypatch.setattr(model_module, "DEFAULT_MODEL", tmp_path / "gone.npz")
    with caplog.at_level("ERROR", logger="gateway.difficulty"):
        scorer = learned.build_scorer(DifficultySpec())
    assert isinstance(scorer, DifficultyScorer) and "cannot be loaded" in caplog.text
    monkeypatch.undo()

    shipped = LearnedModel.load(DEFAULT_MODEL)
    opted_in = dataclasses.replace(shipped, report={**shipped.report, "embedder_kind": "finetuned",
                                                    "encoder": str(tmp_path / "no-encoder")})
    scorer = learned.LearnedScorer(opted_in)
    d = scorer.score(*ask_of({"messages": [{"role": "user", "content": "Prove that sqrt(2) is irrational."}]}))
    assert d.kind == "heuristic(fallback)" and "heuristic(fallback)" in d.header()


def test_the_router_and_the_semantic_cache_share_one_forward_pass():
    """The shipped model reads the sentence embedding the semantic cache computes for the same
    text (MiniLM's memo is keyed by token ids): scoring a request and then looking it up in the
    cache runs the encoder once."""
    from cache.embedder import get_embedder
    from gateway.routing.features import ask_of
    from gateway.routing.learned import build_scorer
    from policies.schema import DifficultySpec

    scorer = build_scorer(DifficultySpec())
    assert scorer.model.report["embedder_kind"] == "static+minilm"
    text = "Write a limerick about a lighthouse keeper's very punctual cat."
    embedder = get_embedder()
    before = embedder.forward_texts
    scored = scorer.score(*ask_of({"messages": [{"role": "user", "content": text}]}))
    assert embedder.forward_texts == before + 1
    cached = embedder.embed_if_fits(text)  # what the semantic cache's lookup embeds
    assert embedder.forward_texts == before + 1, "the cache's lookup reused the router's forward pass"
    assert np.allclose(scored.model_input["embedding"][384:], cached, atol=1e-6)
