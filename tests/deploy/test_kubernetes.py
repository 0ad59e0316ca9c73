"""The Kubernetes manifests (deploy/kubernetes): each overlay rendered by kubectl's
kustomize and validated offline against the Kubernetes OpenAPI schema (strict: unknown
fields are errors) with the schemas kubernetes-validate bundles, then held to the
contract the server needs (probes, grace, security, secrets, Host names)."""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
KUBE = ROOT / "deploy/kubernetes"
OVERLAYS = ["dev", "prod"]
# The oldest Kubernetes the manifests claim (the preStop sleep) and the newest schema.
KUBERNETES_VERSIONS = ["1.30", "1.37"]
SUPERVISOR_DEFAULT_GRACE = 8.0
WATCHDOG_SEC = 30.0  # mcp-supervisor's MCP_SUPERVISOR_WATCHDOG_SEC default
NAMESPACE = "codebase-mcp"


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("kubectl is missing: scripts/test installs Debian's kubernetes-client")
        pytest.skip("kubectl is not installed (scripts/test installs it as root)")
    return path


@cache
def render(overlay: str) -> tuple[dict[str, Any], ...]:
    done = subprocess.run(
        [kubectl(), "kustomize", str(KUBE / "overlays" / overlay)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return tuple(d for d in yaml.safe_load_all(done.stdout) if d)


def find(overlay: str, kind: str, name: str) -> dict[str, Any]:
    matches = [d for d in render(overlay) if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"{overlay}: {kind}/{name}"
    return copy.deepcopy(matches[0])


def kinds(overlay: str) -> set[str]:
    return {d["kind"] for d in render(overlay)}


def container(workload: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    containers = workload["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if name is None or c["name"] == name)


def env_of(c: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in c.get("env", [])}


# --- the schema --------------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_validates_against_the_kubernetes_schema(overlay: str, version: str) -> None:
    import kubernetes_validate

    for doc in render(overlay):
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_schema_check_catches_mistakes() -> None:
    """The validation above can fail: a misspelt field, a wrong type."""
    import kubernetes_validate

    deployment = find("prod", "Deployment", "codebase-mcp")
    container(deployment)["readinessprobe"] = container(deployment).pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError, match="readinessprobe"):
        kubernetes_validate.validate(deployment, "1.30", strict=True)
    hpa = find("prod", "HorizontalPodAutoscaler", "codebase-mcp")
    hpa["spec"]["minReplicas"] = "three"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(hpa, "1.30", strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_everything_lives_in_one_namespace(overlay: str) -> None:
    for doc in render(overlay):
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == NAMESPACE, doc["metadata"]["name"]


def test_what_each_overlay_holds() -> None:
    common = {
        "Namespace",
        "Deployment",
        "StatefulSet",
        "Service",
        "PersistentVolumeClaim",
        "Job",
    }
    assert kinds("dev") == common | {"Secret"}
    # prod ships no Secret: the real one is created out of band.
    assert kinds("prod") == common | {"PodDisruptionBudget", "HorizontalPodAutoscaler"}


# --- the server --------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_server_probes_are_the_supervisors_exec_check(overlay: str) -> None:
    c = container(find(overlay, "Deployment", "codebase-mcp"))
    assert c["startupProbe"]["exec"]["command"] == ["mcp-supervisor", "--check", "--ready"]
    assert c["readinessProbe"]["exec"]["command"] == ["mcp-supervisor", "--check", "--ready"]
    assert c["livenessProbe"]["exec"]["command"] == ["mcp-supervisor", "--check"]
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300, "model pull, migrations"
    live = c["livenessProbe"]
    env = env_of(c)
    watchdog = float(env.get("MCP_SUPERVISOR_WATCHDOG_SEC", {}).get("value", WATCHDOG_SEC))
    # The supervisor restarts a hung server before the kubelet restarts the pod.
    assert live["periodSeconds"] * live["failureThreshold"] > watchdog
    heartbeat_interval = float(env.get("MCP_SUPERVISOR_HEARTBEAT_INTERVAL", {}).get("value", 5))
    assert heartbeat_interval < live["periodSeconds"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_supervisor_ends_the_server_before_the_kubelet_kills_it(overlay: str) -> None:
    deployment = find(overlay, "Deployment", "codebase-mcp")
    c = container(deployment)
    grace = float(env_of(c).get("MCP_SUPERVISOR_GRACE_PERIOD", {}).get("value", 8))
    pause = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    termination = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert termination > pause + grace + 2


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_server_runs_read_only_and_unprivileged(overlay: str) -> None:
    deployment = find(overlay, "Deployment", "codebase-mcp")
    pod = deployment["spec"]["template"]["spec"]
    c = container(deployment)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 1000
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    for key in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(c["resources"][key])
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    workspace = mounts["/workspace"]
    assert workspace["readOnly"] is True
    assert volumes[workspace["name"]]["persistentVolumeClaim"]["readOnly"] is True
    # The heartbeat and notify socket need a writable /tmp on a read-only root.
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    # The chunking processes follow the CPU limit, not the node's cores.
    workers = int(env_of(c)["CODEBASE_INDEX_WORKERS"]["value"])
    assert 1 <= workers <= int(c["resources"]["limits"]["cpu"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_server_is_http_authenticated_and_accepts_its_service_names(overlay: str) -> None:
    from codebase_mcp.serve.http_security import HttpSecuritySettings, check_exposure

    c = container(find(overlay, "Deployment", "codebase-mcp"))
    env = env_of(c)
    assert env["MCP_TRANSPORT"]["value"] == "http"
    assert env["MCP_HOST"]["value"] == "0.0.0.0"
    tokens = env["MCP_AUTH_TOKENS"]
    assert "value" not in tokens, "tokens come from a Secret"
    assert tokens["valueFrom"]["secretKeyRef"]["name"] == "codebase-mcp-secrets"
    assert env.get("MCP_STATELESS_HTTP", {}).get("value", "true") == "true"
    # The server would refuse to start without auth on 0.0.0.0 (exit 78).
    check_exposure("0.0.0.0", HttpSecuritySettings.model_validate({"auth_tokens": "x" * 32}))
    service = find(overlay, "Service", "codebase-mcp")
    hosts = env["MCP_ALLOWED_HOSTS"]["value"].split(",")
    name = service["metadata"]["name"]
    for host in (name, f"{name}.{NAMESPACE}", f"{name}.{NAMESPACE}.svc.cluster.local"):
        assert host in hosts
    assert env["MCP_PORT"]["value"] == str(c["ports"][0]["containerPort"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_select_their_pods_on_named_ports(overlay: str) -> None:
    for name, kind in (
        ("codebase-mcp", "Deployment"),
        ("postgres", "StatefulSet"),
        ("ollama", "Deployment"),
    ):
        service = find(overlay, "Service", name)
        workload = find(overlay, kind, name)
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= labels.items(), name
        assert workload["spec"]["selector"]["matchLabels"].items() <= labels.items(), name
        port_names = {
            p["name"]
            for c in workload["spec"]["template"]["spec"]["containers"]
            for p in c.get("ports", [])
        }
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in port_names, name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_server_and_migration_reach_the_same_database(overlay: str) -> None:
    server = env_of(container(find(overlay, "Deployment", "codebase-mcp")))
    job = find(overlay, "Job", "codebase-mcp-migrate")
    migrate = env_of(container(job))
    assert container(job)["args"] == ["migrate"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] in ("OnFailure", "Never")
    for name in ("POSTGRES_PASSWORD", "REGISTRY_DATABASE_URL"):
        assert server[name] == migrate[name], name
    url = server["REGISTRY_DATABASE_URL"]["value"]
    # $(POSTGRES_PASSWORD) is expanded by the kubelet from the variable defined before it.
    names = [e["name"] for e in container(find(overlay, "Deployment", "codebase-mcp"))["env"]]
    assert names.index("POSTGRES_PASSWORD") < names.index("REGISTRY_DATABASE_URL")
    assert "$(POSTGRES_PASSWORD)@postgres:5432/" in url
    pg = env_of(container(find(overlay, "StatefulSet", "postgres")))
    assert pg["POSTGRES_PASSWORD"] == server["POSTGRES_PASSWORD"]
    assert url.startswith(f"postgresql://{pg['POSTGRES_USER']['value']}:")
    assert url.endswith("/" + pg["POSTGRES_DB"]["value"])


# --- PostgreSQL and Ollama -------------------------------------------------------------


def test_postgres_keeps_its_data_and_has_shared_memory_for_index_builds() -> None:
    sts = find("prod", "StatefulSet", "postgres")
    c = container(sts)
    assert c["image"].startswith("pgvector/pgvector:")
    claims = {t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert mounts["/var/lib/postgresql/data"] in claims
    volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    shm = volumes[mounts["/dev/shm"]]["emptyDir"]
    assert shm["medium"] == "Memory"
    assert shm["sizeLimit"] in ("1Gi", "2Gi")
    assert env_of(c)["PGDATA"]["value"].startswith("/var/lib/postgresql/data/")


def test_ollama_keeps_its_models_on_a_volume() -> None:
    deployment = find("prod", "Deployment", "ollama")
    c = container(deployment)
    assert c["image"].startswith("ollama/ollama")
    models = env_of(c)["OLLAMA_MODELS"]["value"]
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == models)
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    claim = volumes[mount["name"]]["persistentVolumeClaim"]["claimName"]
    find("prod", "PersistentVolumeClaim", claim)


# --- secrets -------------------------------------------------------------------------------


def _secret_refs(overlay: str) -> set[tuple[str, str]]:
    """(secret, key) of every secretKeyRef in the overlay's objects."""
    refs: set[tuple[str, str]] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            ref = node.get("secretKeyRef")
            if isinstance(ref, dict):
                refs.add((ref["name"], ref["key"]))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for doc in render(overlay):
        walk(doc)
    return refs


def test_dev_secrets_hold_every_key_the_pods_read_and_work_as_settings() -> None:
    from codebase_mcp.serve.http_security import load_http_security

    secret = find("dev", "Secret", "codebase-mcp-secrets")
    refs = _secret_refs("dev")
    assert {
        ("codebase-mcp-secrets", "postgres-password"),
        ("codebase-mcp-secrets", "auth-tokens"),
    } <= refs
    for name, key in refs:
        assert name == "codebase-mcp-secrets"
        assert key in secret["stringData"], key
    # The placeholder token passes the server's checks (else dev would exit 78).
    load_http_security({"MCP_AUTH_TOKENS": secret["stringData"]["auth-tokens"]})
    assert re.fullmatch(r"[A-Za-z0-9._~-]+", secret["stringData"]["postgres-password"])


def test_prod_reads_the_same_secret_it_does_not_ship() -> None:
    assert _secret_refs("prod") == _secret_refs("dev")
    text = (KUBE / "overlays/dev/secrets.yaml").read_text()
    assert "kubectl -n codebase-mcp create secret generic codebase-mcp-secrets" in text


# --- prod: scaling and disruptions --------------------------------------------------------


def test_prod_autoscales_on_cpu_and_keeps_replicas_through_disruptions() -> None:
    deployment = find("prod", "Deployment", "codebase-mcp")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    hpa = find("prod", "HorizontalPodAutoscaler", "codebase-mcp")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "codebase-mcp")
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    assert 2 <= hpa["spec"]["minReplicas"] <= deployment["spec"]["replicas"]
    assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    pdb = find("prod", "PodDisruptionBudget", "codebase-mcp")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"].get("maxUnavailable", 0) < hpa["spec"]["minReplicas"]
    assert find("dev", "Deployment", "codebase-mcp")["spec"]["replicas"] == 1
