"""The policy language: typed structs that a YAML policy file is validated into.

The platform team edits YAML only; everything the gateway does with targets, public model names,
tenants and limits is read from these objects. Unknown keys are errors (a typo must never be
silently ignored), and every struct is frozen so a loaded policy can be swapped atomically.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct


NonNegFloat = Annotated[float, Meta(ge=0)]
PosFloat = Annotated[float, Meta(gt=0)]
PosInt = Annotated[int, Meta(ge=1)]
Name = Annotated[str, Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]*$")]
Sha256Hex = Annotated[str, Meta(pattern=r"^(sha256:)?[0-9a-f]{64}$")]



# The models the bundled engine can serve without `model_dir` (selfhost_engine/bundled.py builds
# or fetches them; a test keeps the two lists equal). Kept here so the policy layer imports
# nothing of ours.
BUNDLED = ("smollm2-135m-instruct", "tiny-llama")

class _Spec(Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    pass


class Pricing(_Spec):
    """USD per million tokens. `cached_input` (prompt-cache reads) defaults to `input` when the
    provider has no discount; `cache_write` (prompt-cache writes, e.g. Anthropic's
    `cache_creation_input_tokens`: 1.25x input for 5-minute entries) defaults to `input`."""

    input: NonNegFloat = 0.0
    cached_input: NonNegFloat | None = None
    cache_write: NonNegFloat | None = None
    output: NonNegFloat = 0.0

    def cost(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0, cache_write_tokens: int = 0) -> float:
        cached_rate = self.input if self.cached_input is None else self.cached_input
        write_rate = self.input if self.cache_write is None else self.cache_write
        uncached = max(0, prompt_tokens - cached_tokens - cache_write_tokens)
        return (uncached * self.input + cached_tokens * cached_rate + cache_write_tokens * write_rate
                + completion_tokens * self.output) / 1e6


class TimeoutSpec(_Spec):
    connect: PosFloat = 5.0
    first_token: PosFloat = 60.0
    total: PosFloat = 600.0


class EmbeddedEngine(_Spec):
    """The bundled engine, run inside the gateway process (the embedded default)."""

    # None: the bundled model the target's `model` names (selfhost_engine/bundled.py), fetched or
    # built once into the cache folder: smollm2-135m-instruct, or tiny-llama (random weights).
    model_dir: str | None = None
    max_num_seqs: PosInt = 32
    max_model_len: PosInt = 2048
    num_blocks: PosInt | None = None


class AutoscaleSpec(_Spec):
    """Replica-count advice for a self-hosted target (`gateway/autoscale.py`), exported as
    `gateway_selfhost_desired_replicas{target}` for KEDA or any autoscaler to act on.

    The per-replica capacity targets say how much of each load signal one replica should carry;
    the fleet needs ceil(Σ signal / target) replicas for the tightest signal, plus `warm_pool`
    idle replicas, within [min_replicas, max_replicas]. Unset a target to ignore that signal.
    Queue and token signals, not CPU: an LLM replica is saturated long before its CPU says so.
    """

    min_replicas: PosInt = 1
    max_replicas: PosInt = 8
    warm_pool: Annotated[int, Meta(ge=0)] = 0  # idle replicas kept on top of what the load needs
    waiting_requests: PosFloat | None = 4.0  # requests queued in the engine, per replica
    queued_prefill_tokens: PosFloat | None = 8192.0  # prompt tokens waiting for prefill, per replica
    active_decode_tokens: PosFloat | None = None  # context tokens of running sequences, per replica
    kv_usage: Annotated[float, Meta(gt=0, le=1)] | None = 0.85  # KV-cache fraction in use, per replica
    scale_up_seconds: Annotated[float, Meta(ge=0, le=3600)] = 60.0  # the need must hold this long
    scale_down_seconds: Annotated[float, Meta(ge=0, le=7200)] = 300.0  # the lower need must hold this long
    sample_seconds: Annotated[float, Meta(ge=0.1, le=300)] = 5.0  # how often the load is sampled

    def __post_init__(self) -> None:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) is above max_replicas ({self.max_replicas})")
        if all(v is None for v in (self.waiting_requests, self.queued_prefill_tokens, self.active_decode_tokens,
                                   self.kv_usage)):
            raise ValueError("set at least one per-replica capacity target")


class TargetSpec(_Spec):
    """One upstream: a provider kind, an upstream model, where it lives and what it costs."""

    # local_embeddings: the bundled MiniLM sentence-embedding model, in process (no download).
    provider: Literal["openai", "azure", "anthropic", "selfhost", "local_embeddings"]
    model: Name
    # openai and anthropic: "sdk" calls through the official SDK; "passthrough" forwards bytes over
    # the pooled aiohttp session (measured ~3x the throughput; same wire format and auth headers).
    transport: Literal["sdk", "passthrough"] = "sdk"
    base_url: str | None = None
    # Several replicas of one self-hosted target (balanced by load and prefix affinity).
    endpoints: list[str] = []
    api_key_env: str | None = None
    api_version: str | None = None  # Azure OpenAI only
    headers: dict[str, str] = {}
    pricing: Pricing = Pricing()
    # Self-hosted cost: GPU $/hour and the tokens/s one replica sustains give a per-token price.
    gpu_hourly_usd: NonNegFloat | None = None
    tokens_per_second: PosFloat | None = None
    timeouts: TimeoutSpec = TimeoutSpec()
    context_window: PosInt | None = None
    max_output_tokens: PosInt | None = None
    embedded: EmbeddedEngine | None = None
    autoscale: AutoscaleSpec | None = None  # selfhost targets served over HTTP only
    # selfhost only: the protocols the server speaks (default: chat, completions, embeddings).
    apis: list[Literal["openai.chat", "openai.completions", "openai.embeddings", "openai.responses",
                       "anthropic.messages"]] | None = None

    def context_limit(self) -> int | None:
        """The context window this target is known to have (None: unknown, assume it fits)."""
        if self.context_window is not None:
            return self.context_window
        return self.embedded.max_model_len if self.embedded is not None else None

    def effective_pricing(self) -> Pricing:
        """Self-hosted targets are priced from GPU time so cost comparisons stay honest."""
        if self.gpu_hourly_usd is not None and self.tokens_per_second:
            per_million = self.gpu_hourly_usd / 3600.0 / self.tokens_per_second * 1e6
            return Pricing(input=per_million / 4, cached_input=0.0, output=per_million)
        return self.pricing


class SemanticCacheSpec(_Spec):
    """Opt-in: answers for paraphrases, scoped to tenant + model + system prompt + parameters.

    `threshold` is the one strictness knob: the cosine similarity (MiniLM) a cached request needs
    to be a candidate. Every candidate must also pass the verifier (numbers, languages, places,
    units, formats, names, negations, antonyms, directions...) before its answer is served, so a
    near miss is refused however similar it looks. Raise it to serve only closer paraphrases.
    """

    enabled: bool = False
    # Measured (bench/semantic_cache_quality.py) on 925 pairs written blind by six writers who never
    # saw the verifier (`holdout3`, measured once): 29 of 573 near misses served = 5.1 % (cosine
    # alone: 70 %), 35 % of paraphrases served. On pairs written by the verifier's own author the
    # same default serves 0 % and 66-70 %: those figures flatter it. Lower floors serve more of
    # both (0.75: 51 % of paraphrases, 7.5 % of near misses). Enable it where a near miss served
    # now and then is acceptable (FAQ-like traffic), and measure on your own traffic first.
    threshold: Annotated[float, Meta(gt=0, le=1)] = 0.85
    multi_turn: bool = False


class CacheSpec(_Spec):
    """Response caching for one public model. Only deterministic requests are ever cached."""

    enabled: bool = True
    ttl_seconds: PosFloat = 3600.0
    max_entry_bytes: PosInt = 512 * 1024
    semantic: SemanticCacheSpec = SemanticCacheSpec()
    # Provider-side prompt caching: mark static prefixes at least this long (Anthropic
    # cache_control breakpoints; OpenAI prompt_cache_key).
    prompt_cache_min_tokens: PosInt = 1024


class OutputSpec(_Spec):
    """What a request asking for more output than allowed gets (`max_tokens`, `max_completion_tokens`,
    `max_output_tokens`). The allowance is the smallest of `limits.max_tokens`, the model's
    `max_tokens` and, per target, the target's `max_output_tokens`.

    `reject` (default): a 400 naming the maximum when the model's cap is exceeded. `clamp`: the
    request is sent with the allowance instead, and the response says so in `x-gateway-clamped`
    (e.g. an agent's side calls, which ask for 32,000 tokens, routed to a small engine)."""

    over: Literal["clamp", "reject"] = "reject"


class ModelSpec(_Spec):
    """A public model name callers use; `targets` are tried in order (primary, then fallbacks)."""

    targets: Annotated[list[Name], Meta(min_length=1)]
    description: str = ""
    cache: CacheSpec = CacheSpec()
    max_tokens: PosInt | None = None  # cap on max_tokens / max_completion_tokens for this model
    default_max_tokens: PosInt | None = None
    output: OutputSpec = OutputSpec()  # a request over the output allowance: clamp or reject
    # Other names callers use for this model: exact names or glob patterns (`claude-sonnet-*`
    # catches Claude Code's dated names). Exact public names win, then exact aliases, then the
    # first matching pattern in policy order.
    aliases: list[Annotated[str, Meta(min_length=1, max_length=256)]] = []


class TenantLimits(_Spec):
    requests_per_minute: PosInt | None = None
    tokens_per_minute: PosInt | None = None
    concurrent_requests: PosInt | None = None
    tokens_per_day: PosInt | None = None
    tokens_per_month: PosInt | None = None
    usd_per_month: NonNegFloat | None = None


class TenantSpec(_Spec):
    keys: list[Sha256Hex] = []
    revoked_keys: list[Sha256Hex] = []
    tier: Name = "standard"
    allowed_models: list[Name] | None = None  # None: every public model
    limits: TenantLimits = TenantLimits()
    model_limits: dict[Name, TenantLimits] = {}


class Limits(_Spec):
    """Admission bounds: checked before any work, so a hostile request costs almost nothing."""

    max_body_bytes: PosInt = 4 * 1024 * 1024
    max_prompt_tokens: PosInt = 200_000
    max_messages: PosInt = 2048
    max_n: PosInt = 8
    max_tokens: PosInt = 65_536


class Range(_Spec):
    """Inclusive lower bound, exclusive upper bound: adjacent ranges never overlap."""

    min: float | None = None
    max: float | None = None

    def contains(self, value: float) -> bool:
        return (self.min is None or value >= self.min) and (self.max is None or value < self.max)


class DifficultyMatch(Range):
    """A raw score range (`min`/`max`), and/or the calibrated verdict (`hard: true|false`).

    `hard` uses the threshold the gateway derived from the policy's `difficulty.hard_recall` or
    `difficulty.frontier_share` (default: hard_recall 0.95) on the shipped calibration split, so a
    route says what it wants ("the hard ones") instead of a number tied to one model version.
    """

    hard: bool | None = None

    def matches(self, score: float, hard: bool | None) -> bool:
        if self.hard is not None and hard is not self.hard:
            return False
        return self.contains(score)


class RouteMatch(_Spec):
    """Every condition given must hold; an empty match matches everything."""

    models: list[Name] | None = None  # public model names, or "auto"
    tenants: list[Name] | None = None
    tiers: list[Name] | None = None
    metadata: dict[str, str] = {}  # request `metadata` key → required value
    headers: dict[str, str] = {}  # request header (any case) → required value
    difficulty: DifficultyMatch | None = None  # score in [0, 1], or {hard: true|false}
    prompt_tokens: Range | None = None  # estimated prompt tokens
    priority: list[Literal["interactive", "batch"]] | None = None


class WeightedTarget(_Spec):
    target: Name
    weight: NonNegFloat = 1.0  # relative share among the route's targets (e.g. 95 / 5 for a canary)


class RetrySpec(_Spec):
    attempts: PosInt = 2  # per target, first try included
    max_seconds: PosFloat = 10.0  # per target, across its attempts
    backoff_base: PosFloat = 0.05
    backoff_max: PosFloat = 1.0


class TimeoutOverride(_Spec):
    connect: PosFloat | None = None
    first_token: PosFloat | None = None
    total: PosFloat | None = None


class RouteSpec(_Spec):
    """A routing rule: the first route whose `match` holds decides the request's plan."""

    name: Name
    targets: Annotated[list[WeightedTarget], Meta(min_length=1)]
    match: RouteMatch = RouteMatch()
    fallbacks: list[Name] = []  # tried in order after the chosen target
    timeouts: TimeoutOverride | None = None
    retry: RetrySpec | None = None
    cache: CacheSpec | None = None  # overrides the model's cache block
    # Keep this route's decision for the whole conversation (its later turns and tool loops);
    # false: every request of a conversation is decided on its own.
    sticky: bool = True


class DifficultyWeightsSpec(_Spec):
    """Weights of the difficulty scorer's features (unset: the scorer's defaults)."""

    length: float | None = None
    code: float | None = None
    math: float | None = None
    reasoning: float | None = None
    constraints: float | None = None
    turns: float | None = None
    tools: float | None = None
    bias: float | None = None


class ShadowSpec(_Spec):
    """A candidate scorer that scores the same traffic without deciding anything (its score is
    reported next to the live one in `x-gateway-difficulty` and in the routing decision records)."""

    scorer: Literal["learned", "heuristic"] = "learned"
    model: str | None = None  # a model file from `hybrid-gateway router train` (default: the shipped one)


class DifficultySpec(_Spec):
    """How `auto` (and routes matching on difficulty) judge a request.

    Default: the learned scorer (MiniLM embedding + heuristic features, logistic regression,
    shipped in gateway/routing/data/model.npz), falling back to the heuristic when embeddings are
    unavailable. `hard_recall` (share of hard prompts that must reach the frontier) or
    `frontier_share` (share of all traffic allowed there) sets the threshold behind
    `match: {difficulty: {hard: true}}`; at most one of them (neither: hard_recall 0.95).
    """

    scorer: Literal["learned", "heuristic"] = "learned"
    model: str | None = None  # a model file from `hybrid-gateway router train` (default: the shipped one)
    hard_recall: Annotated[float, Meta(gt=0, le=1)] | None = None
    frontier_share: Annotated[float, Meta(gt=0, lt=1)] | None = None
    shadow: ShadowSpec | None = None
    weights: DifficultyWeightsSpec = DifficultyWeightsSpec()  # the heuristic scorer (and the fallback)
    knn: bool = False  # the legacy heuristic + kNN blend (over built-in examples) instead of the learned scorer
    knn_weight: Annotated[float, Meta(ge=0, le=1)] = 0.5
    knn_k: PosInt = 5


class BreakerSpec(_Spec):
    """Circuit breakers, one per target (and per endpoint of a multi-endpoint target)."""

    window_seconds: Annotated[int, Meta(ge=1, le=3600)] = 30
    min_calls: PosInt = 10
    failure_rate: Annotated[float, Meta(gt=0, le=1)] = 0.5
    slow_call_seconds: PosFloat = 30.0
    base_cooldown: PosFloat = 5.0
    max_cooldown: PosFloat = 120.0
    half_open_probes: PosInt = 1


class BalancerSpec(_Spec):
    """Replicas of a self-hosted target: active health checks and load-aware placement."""

    poll_interval: PosFloat = 1.0
    unhealthy_after: PosInt = 3
    healthy_after: PosInt = 2
    load_factor: Annotated[float, Meta(ge=1)] = 1.25
    deep_check: bool = False


class StickySpec(_Spec):
    """Routing decided once per conversation (`routes[].sticky`): how long a decision is kept
    after the conversation's last request (memory, or Redis shared by every replica)."""

    ttl_seconds: PosFloat = 3600.0


class ResponsesSpec(_Spec):
    """Stored Responses API answers (`store`, OpenAI's default): kept this long in the state
    store (memory, or Redis when configured) for `previous_response_id` and GET /v1/responses/{id}."""

    ttl_seconds: PosFloat = 30 * 24 * 3600.0  # OpenAI keeps stored responses 30 days


class Policy(_Spec):
    targets: Annotated[dict[Name, TargetSpec], Meta(min_length=1)]
    models: Annotated[dict[Name, ModelSpec], Meta(min_length=1)]
    version: Literal[1, 2] = 1
    default_model: Name | None = None
    routes: list[RouteSpec] = []
    difficulty: DifficultySpec = DifficultySpec()
    retry: RetrySpec = RetrySpec()
    breakers: BreakerSpec = BreakerSpec()
    balancing: BalancerSpec = BalancerSpec()
    tenants: dict[Name, TenantSpec] = {}
    admin_keys: list[Sha256Hex] = []
    limits: Limits = Limits()
    responses: ResponsesSpec = ResponsesSpec()
    sticky: StickySpec = StickySpec()

    def reference_errors(self) -> list[tuple[str, str]]:
        """Cross-references msgspec cannot check: (JSON path, message) for each dangling name."""
        errors: list[tuple[str, str]] = []
        if self.difficulty.hard_recall is not None and self.difficulty.frontier_share is not None:
            errors.append(("$.difficulty", "give hard_recall or frontier_share, not both"))
        for target_name, target in self.targets.items():
            if target.autoscale is not None and (target.provider != "selfhost" or target.embedded is not None):
                errors.append((f"$.targets.{target_name}.autoscale",
                               "autoscale advice is for selfhost targets served over HTTP (not embedded)"))
            if target.embedded is not None and target.embedded.model_dir is None and target.model not in BUNDLED:
                errors.append((f"$.targets.{target_name}.model",
                               f"an embedded target without model_dir serves a bundled model: one of "
                               f"{', '.join(BUNDLED)} (got {target.model!r})"))
        for model_name, model in self.models.items():
            for i, target in enumerate(model.targets):
                if target not in self.targets:
                    errors.append((f"$.models.{model_name}.targets[{i}]", f"unknown target {target!r}"))
        if self.default_model is not None and self.default_model not in self.models:
            errors.append(("$.default_model", f"{self.default_model!r} is not a declared model"))
        for tenant_name, tenant in self.tenants.items():
            for i, model_name in enumerate(tenant.allowed_models or []):
                if model_name not in self.models and model_name != "auto":
                    errors.append((f"$.tenants.{tenant_name}.allowed_models[{i}]", f"unknown model {model_name!r}"))
        names: set[str] = set()
        for r, route in enumerate(self.routes):
            base = f"$.routes[{r}]"
            if route.name in names:
                errors.append((f"{base}.name", f"duplicate route name {route.name!r}"))
            names.add(route.name)
            for i, weighted in enumerate(route.targets):
                if weighted.target not in self.targets:
                    errors.append((f"{base}.targets[{i}].target", f"unknown target {weighted.target!r}"))
            if sum(w.weight for w in route.targets) <= 0:
                errors.append((f"{base}.targets", "at least one target needs a weight above 0"))
            for i, target in enumerate(route.fallbacks):
                if target not in self.targets:
                    errors.append((f"{base}.fallbacks[{i}]", f"unknown target {target!r}"))
            for i, model_name in enumerate(route.match.models or []):
                if model_name not in self.models and model_name != "auto":
                    errors.append((f"{base}.match.models[{i}]", f"unknown model {model_name!r} (declare it or use 'auto')"))
        return errors


def json_schema() -> dict:
    """JSON Schema of the policy file, for editors (`policies/schema.json`)."""
    return msgspec.json.schema(Policy)
