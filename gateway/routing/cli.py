"""`hybrid-gateway router ...`: train the learned difficulty model and inspect what a policy gets.

    hybrid-gateway router train [--out gateway/routing/data/model.npz] [--feedback FILE ...]
    hybrid-gateway router info [--model PATH] [--policy P] [--hard-recall R | --frontier-share S]
    hybrid-gateway router report --policy P --decisions FILE [--json] [--frontier T] [--cheap T]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _train(args: argparse.Namespace) -> int:
    from gateway.routing import embedders
    from gateway.routing.corpus import load_labelled
    from gateway.routing.model import DEFAULT_MODEL
    from gateway.routing.train import read_feedback, report_markdown, rows_from_feedback, train

    encoder = str(Path(args.encoder or embedders.ENCODER_DIR).resolve()) if args.embedder == "finetuned" else None
    embed = embedders.build(args.embedder, args.embed_tokens, encoder=encoder)
    name = embedders.name_of(args.embedder, args.embed_tokens)
    corpus = load_labelled() if args.data == "corpus" else None  # None: real traffic (ShareGPT)
    feedback = []
    for path in args.feedback or []:
        try:
            feedback += rows_from_feedback(read_feedback(path), embed, weight=args.feedback_weight)
        except (OSError, ValueError, KeyError) as exc:
            print(f"hybrid-gateway router train: {path}: {exc}", file=sys.stderr)
            return 2
    try:
        model = train(embed, corpus=corpus, feedback=feedback, l2=args.l2, embedder_name=name,
                      embedder_kind=args.embedder, embed_tokens=args.embed_tokens, encoder=encoder)
    except ModuleNotFoundError as exc:
        print(f"hybrid-gateway router train: {exc.name} is not installed: pip install 'hybrid-gateway[train]' "
              "(or --data corpus)", file=sys.stderr)
        return 2
    out = Path(args.out or DEFAULT_MODEL)
    model.save(out)
    report = out.with_name("TRAINING_REPORT.md") if args.out is None else out.with_suffix(".report.md")
    report.write_text(report_markdown(model), encoding="utf-8")
    print(f"model {model.version} -> {out} ({out.stat().st_size} bytes); report -> {report}")
    print(json.dumps(model.report["calibration"], indent=2))
    return 0


def _info(args: argparse.Namespace) -> int:
    from gateway.routing.model import LearnedModel, ModelError

    model_path = args.model
    asked: dict = {}
    if args.policy:
        from policies.loader import PolicyError, load_policy

        try:
            spec = load_policy(args.policy).difficulty
        except PolicyError as exc:
            print(str(exc), file=sys.stderr)
            return 2
        model_path = model_path or spec.model
        if spec.frontier_share is not None:
            asked = {"frontier_share": spec.frontier_share}
        elif spec.hard_recall is not None:
            asked = {"hard_recall": spec.hard_recall}
    if args.frontier_share is not None:
        asked = {"frontier_share": args.frontier_share}
    elif args.hard_recall is not None:
        asked = {"hard_recall": args.hard_recall}
    asked = asked or {"hard_recall": 0.95}
    try:
        model = LearnedModel.load(model_path) if model_path else LearnedModel.load()
        calibration = model.calibration(**asked)
    except (ModelError, ValueError) as exc:
        print(f"hybrid-gateway router info: {exc}", file=sys.stderr)
        return 2
    print(f"model {model.version}: {model.report.get('model')} over {model.report.get('embedder')}")
    print(calibration.describe())
    return 0


def _report(args: argparse.Namespace) -> int:
    from gateway.routing.model import LearnedModel, ModelError
    from gateway.routing.report import build, read_rows, render
    from policies.loader import PolicyError, load_policy

    try:
        policy = load_policy(args.policy)
        for name in (args.frontier, args.cheap):
            if name is not None and name not in policy.targets:
                raise ValueError(f"{args.policy} has no target {name!r}")
        model = LearnedModel.load(args.model or policy.difficulty.model) if (args.model or policy.difficulty.model) \
            else LearnedModel.load()
        rows = [row for path in args.decisions for row in read_rows(path)]
        report = build(rows, policy, model, frontier=args.frontier, cheap=args.cheap)
    except (PolicyError, ModelError, OSError, ValueError) as exc:
        print(f"hybrid-gateway router report: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0


def add_router_commands(sub: argparse._SubParsersAction) -> None:
    router = sub.add_parser("router", help="the learned difficulty router: train, inspect, report")
    router_sub = router.add_subparsers(dest="router_command", required=True)
    train = router_sub.add_parser("train", help="fit the model on the shipped corpus (+ production feedback)")
    train.add_argument("--out", help="model file (default: the shipped gateway/routing/data/model.npz)")
    train.add_argument("--feedback", action="append",
                       help="JSONL of labelled decisions (GET /admin/router/export) or {text, label|score} rows")
    train.add_argument("--feedback-weight", type=float, default=1.0, help="weight of a feedback row vs a corpus row")
    train.add_argument("--l2", type=float, help="fix the L2 strength (default: cross-validated on the train split)")
    train.add_argument("--data", choices=["sharegpt", "corpus"], default="sharegpt",
                       help="sharegpt: real chat turns (needs the `train` extra); corpus: the older shipped corpus")
    train.add_argument("--embedder", choices=["static", "minilm", "static+minilm", "finetuned"], default="static+minilm",
                       help="static: mean of MiniLM word-piece vectors (~0.3 ms); minilm: the sentence embedding "
                            "(the semantic cache's forward pass); static+minilm: both side by side; finetuned: "
                            "MiniLM fine-tuned on the labelled traffic (python -m gateway.routing.finetune first)")
    train.add_argument("--encoder", help="with --embedder finetuned: the fine-tuned folder (default: finetune.py's --out)")
    train.add_argument("--embed-tokens", type=int, default=128, help="word pieces of the turn's head that are embedded")
    train.set_defaults(func=_train)
    info = router_sub.add_parser("info", help="the model's version and the threshold a policy's intent derives")
    info.add_argument("--model", help="model file (default: the shipped one, or the policy's)")
    info.add_argument("--policy", help="read difficulty.model / hard_recall / frontier_share from this policy")
    group = info.add_mutually_exclusive_group()
    group.add_argument("--hard-recall", type=float)
    group.add_argument("--frontier-share", type=float)
    info.set_defaults(func=_info)
    report = router_sub.add_parser("report", help="routing shares and savings per tenant and route, from recorded decisions")
    report.add_argument("--policy", required=True, help="prices, frontier and cheap tier come from this policy")
    report.add_argument("--decisions", action="append", required=True,
                        help="JSON lines of decisions (GET /admin/router/export?labelled=false); repeatable")
    report.add_argument("--model", help="model file whose calibration derives the hard_recall thresholds")
    report.add_argument("--frontier", help="target to compare against (default: the priciest difficulty-routed one)")
    report.add_argument("--cheap", help="target easy requests go to in the what-ifs (default: the cheapest)")
    report.add_argument("--json", action="store_true", help="the report as JSON")
    report.set_defaults(func=_report)
