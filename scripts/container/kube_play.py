"""The Kubernetes dev overlay run for real with `podman kube play` (podman 4.3), as far as
podman and this machine allow: the codebase-mcp Deployment with its Secret, probes,
security context and volumes, against the container test's PostgreSQL and Ollama-API
server on the host network.

  python scripts/container/kube_play.py IMAGE PG_URL OLLAMA_URL WORKDIR RUN_ID

What is changed before the play, and why (each is printed):
  - the image: the one this test built (no registry here);
  - hostNetwork: no cluster DNS or Services, so the server reaches PostgreSQL and Ollama on
    127.0.0.1; REGISTRY_DATABASE_URL's host and database and OLLAMA_BASE_URL point there, the
    password still comes from the Secret through $(POSTGRES_PASSWORD);
  - MCP_PORT: a free port (the host network is shared), and no `ports:` (podman refuses
    port mappings on the host network);
  - $(VAR) references in env values expanded here, as the kubelet would: podman 4.3
    passes them through literally;
  - the repositories volume: a hostPath directory instead of the PVC (nothing fills a PVC);
  - names get the run id (podman's secrets and pods are machine-wide);
  - the Secret: podman 4.3 stores a played Secret as YAML but reads it back as JSON, so
    it is created with `podman secret create` as the JSON map of key -> base64 that
    secretKeyRef expects (same keys and values, the database password set to the test's).
What is not run is printed as NOT RUN lines. Prints PASS/FAIL lines; exits non-zero when a
check fails.
"""

from __future__ import annotations

import base64
import json
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts" / "container"))

from mcp_session import write_repo  # noqa: E402

PODMAN = ["podman", "--runtime", "runc"]
GRACE = 8

# Why each object of the overlay is not played (podman 4.3 plays Pods, Deployments and
# PersistentVolumeClaims; images come from no registry here).
NOT_RUN = {
    "Namespace": "podman has no namespaces",
    "Service": "podman kube play 4.3 ignores Services (no cluster DNS, no virtual IPs)",
    "StatefulSet": "podman kube play 4.3 does not support StatefulSets (postgres); the "
    "test's PostgreSQL with pgvector stands in",
    "Job": "podman kube play 4.3 does not support Jobs (the migration); the supervisor in "
    "the played pod migrates at start instead",
    "HorizontalPodAutoscaler": "no autoscaler in podman",
    "PodDisruptionBudget": "no evictions in podman",
}


class Checks:
    def __init__(self) -> None:
        self.failed = 0

    def check(self, ok: bool, what: str) -> bool:
        print(f"{'PASS' if ok else 'FAIL'}: kube play: {what}", flush=True)
        self.failed += not ok
        return ok


def podman(
    *args: str, check: bool = False, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PODMAN, *args], capture_output=True, text=True, check=check, timeout=timeout
    )


def render(overlay: str) -> list[dict[str, Any]]:
    done = subprocess.run(
        ["kubectl", "kustomize", str(ROOT / "deploy/kubernetes/overlays" / overlay)],
        capture_output=True,
        text=True,
        check=True,
    )
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def adapt(
    docs: list[dict[str, Any]],
    *,
    image: str,
    pg_url: str,
    ollama_url: str,
    port: int,
    workspace: Path,
    run_id: str,
) -> tuple[dict[str, Any], dict[str, str], str]:
    """The Deployment to play, the Secret's data (database password replaced) and the
    podman secret's name."""
    pg = urlsplit(pg_url)
    secret_name = f"{run_id}-codebase-mcp-secrets"
    for doc in docs:
        kind, name = doc["kind"], doc["metadata"]["name"]
        if kind in NOT_RUN:
            print(f"NOT RUN: {kind}/{name}: {NOT_RUN[kind]}")
        elif kind == "Deployment" and name == "ollama":
            print(
                "NOT RUN: Deployment/ollama: its image cannot be pulled here (no container "
                "registry); the test's Ollama-API server stands in"
            )
        elif kind == "PersistentVolumeClaim":
            print(
                f"NOT RUN: PersistentVolumeClaim/{name}: replaced by a hostPath directory "
                "or not used by the played pod"
            )
    secret = next(d for d in docs if d["kind"] == "Secret")
    data = dict(secret["stringData"])
    data["postgres-password"] = pg.password or ""
    deployment = next(
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "codebase-mcp"
    )
    deployment["metadata"]["name"] = f"{run_id}-codebase-mcp"
    deployment["metadata"].pop("namespace", None)
    pod = deployment["spec"]["template"]["spec"]
    pod["hostNetwork"] = True
    (container,) = pod["containers"]
    container["image"] = image
    container["imagePullPolicy"] = "Never"
    for env in container["env"]:
        ref = env.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            ref["name"] = secret_name
        if env["name"] == "REGISTRY_DATABASE_URL":
            url = env["value"]
            assert "@postgres:5432/codebase_mcp" in url, url
            url = url.replace("@postgres:5432/codebase_mcp", f"@{pg.hostname}:{pg.port}{pg.path}")
            env["value"] = url.replace("postgresql://codebase:", f"postgresql://{pg.username}:")
        elif env["name"] == "OLLAMA_BASE_URL":
            env["value"] = ollama_url
        elif env["name"] == "MCP_PORT":
            env["value"] = str(port)
    # Port mappings are refused on the host network: the server listens on MCP_PORT.
    container.pop("ports")
    # podman 4.3 passes $(VAR) references through literally; expand them as the kubelet
    # does, from the variables defined before (the Secret's values included).
    known: dict[str, str] = {}
    for env in container["env"]:
        ref = env.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            known[env["name"]] = data[ref["key"]]
        elif "value" in env:
            env["value"] = re.sub(
                r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                lambda m: known.get(m[1], m[0]),
                env["value"],
            )
            known[env["name"]] = env["value"]
    for volume in pod["volumes"]:
        if "persistentVolumeClaim" in volume:
            volume.pop("persistentVolumeClaim")
            volume["hostPath"] = {"path": str(workspace), "type": "Directory"}
    return deployment, data, secret_name


def container_name(deployment: dict[str, Any]) -> str:
    name = deployment["metadata"]["name"]
    return f"{name}-pod-0-{deployment['spec']['template']['spec']['containers'][0]['name']}"


async def mcp_session(base: str, token: str, repo: str) -> dict[str, Any]:
    from fastmcp import Client

    async with Client(f"{base}/mcp", auth=token, mode="legacy") as client:
        tools = {t.name for t in await client.list_tools()}
        job = await client.call_tool("index_repository", {"path": repo, "wait": True})
        found = await client.call_tool("search_code", {"query": "total with sales tax"})
    return {"tools": tools, "job": job.structured_content, "found": found.structured_content}


def main(argv: list[str]) -> int:
    if len(argv) != 5:
        print(__doc__, file=sys.stderr)
        return 2
    image, pg_url, ollama_url, workdir, run_id = argv
    checks = Checks()
    work = Path(workdir)
    (work / "kube-ws").mkdir(parents=True, exist_ok=True)
    write_repo(work / "kube-ws")  # world-readable: the pod runs as uid 1000
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    docs = render("dev")
    deployment, secret, secret_name = adapt(
        docs,
        image=image,
        pg_url=pg_url,
        ollama_url=ollama_url,
        port=port,
        workspace=work / "kube-ws",
        run_id=run_id,
    )
    played = work / "kube-play.yaml"
    played.write_text(yaml.safe_dump(deployment))
    secret_file = work / "kube-secret.json"
    secret_file.write_text(
        json.dumps({k: base64.b64encode(v.encode()).decode() for k, v in secret.items()})
    )
    podman("secret", "rm", secret_name)
    podman("secret", "create", secret_name, str(secret_file), check=True)
    secret_file.unlink()
    name = container_name(deployment)
    try:
        done = podman("kube", "play", str(played), timeout=300)
        if not checks.check(done.returncode == 0, "podman kube play of the Deployment"):
            print(done.stderr.strip()[-1000:], file=sys.stderr)
            return 1
        ready = False
        started = time.monotonic()
        while time.monotonic() - started < 120:
            if podman("exec", name, "mcp-supervisor", "--check", "--ready").returncode == 0:
                ready = True
                break
            time.sleep(1)
        checks.check(
            ready,
            f"the pod's server is ready (--check --ready) after {time.monotonic() - started:.0f} s",
        )
        if not ready:
            print(podman("logs", "--tail", "30", name).stderr, file=sys.stderr)
            return 1
        inspect = json.loads(podman("inspect", name).stdout)[0]
        config, host = inspect["Config"], inspect["HostConfig"]
        checks.check(config["User"].split(":")[0] == "1000", f"runs as uid 1000 ({config['User']})")
        checks.check(host["ReadonlyRootfs"] is True, "read-only root filesystem")
        checks.check(
            host["CapAdd"] in (None, []) and "CAP_KILL" in (host.get("CapDrop") or []),
            "capabilities dropped",
        )
        health = podman("healthcheck", "run", name)
        checks.check(
            health.returncode == 0, "the liveness probe, played as podman's healthcheck, passes"
        )
        base = f"http://127.0.0.1:{port}"
        checks.check(
            httpx.get(f"{base}/health", timeout=5).status_code == 200,
            "GET /health 200 without a token",
        )
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
        accept = {"Accept": "application/json, text/event-stream"}
        code = httpx.post(f"{base}/mcp", json=body, headers=accept, timeout=5).status_code
        checks.check(code == 401, f"POST /mcp without the Secret's token: {code}")
        seen = anyio.run(mcp_session, base, secret["auth-tokens"].split(",")[0], "/workspace/shop")
        checks.check(
            "search_code" in seen["tools"], "an MCP client with the Secret's token lists the tools"
        )
        checks.check(
            seen["job"]["state"] == "completed",
            f"indexes the hostPath repository: {seen['job']['state']}",
        )
        paths = [r["path"] for r in seen["found"]["results"]]
        checks.check(any("invoice" in p for p in paths), f"and finds it: {paths[:3]}")
        pod = f"{deployment['metadata']['name']}-pod-0"
        t0 = time.monotonic()
        podman("pod", "stop", "-t", str(GRACE + 4), pod)
        took = time.monotonic() - t0
        exit_code = json.loads(podman("inspect", name).stdout)[0]["State"]["ExitCode"]
        checks.check(
            exit_code == 0 and took < GRACE, f"podman pod stop: exit {exit_code} after {took:.1f} s"
        )
        logs = podman("logs", name)
        text = logs.stdout + logs.stderr
        leaked = [k for k, v in secret.items() if v and v in text]
        checks.check(not leaked, f"no secret in the pod's log ({leaked or 'none'})")
    finally:
        podman("kube", "down", str(played))
        podman("secret", "rm", secret_name)
    return 1 if checks.failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
