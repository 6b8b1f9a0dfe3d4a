"""Everything the difficulty router knows, in one place, one module per concern.

The policy router (`gateway/router.py`) decides which target serves a request; this package
answers the question it asks of `auto`: how hard is this request?

    features.py      the hand features (length, code, math, reasoning, ...) in [0, 1]
    scorer.py        `Difficulty` (score + explanation) and the heuristic `DifficultyScorer`
    knn.py           the legacy kNN scorer over labelled example prompts
    learned.py       the default scorer at request time: the learned model, heuristic fallback
    model.py         the learned model file: logistic regression, calibration, loading
    static_embed.py  the cheap embedder the shipped model uses (static MiniLM word pieces)
    train.py         `hybrid-gateway router train`: fit a model on the corpus and feedback
    corpus.py        the labelled corpus (data/prompts.jsonl, data/labels.jsonl)
    sharegpt.py      real chat traffic (ShareGPT, allowed partition only) for labels and training
    decisions.py     recorded routing decisions and feedback labels (retraining, reports)
    cli.py           the `hybrid-gateway router ...` commands
    data/            the shipped model, corpus, labels, rubric and provenance
"""
