"""Kubernetes manifests validate against the Kubernetes schemas and wire probes to BentoML's."""

from __future__ import annotations

import json
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
CONTAINER_REPORT = K8S.parents[1] / "docs" / "bench" / "container.json"  # make bench-container
MANIFESTS = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
VERSION = "1.30"


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_is_schema_valid(path: Path) -> None:
    for doc in _docs(path):
        kubernetes_validate.validate(doc, VERSION, strict=True)


def _deployments() -> dict[str, dict]:
    return {d["metadata"]["name"]: d for p in MANIFESTS for d in _docs(p) if d["kind"] == "Deployment"}


def test_probes_resources_and_shutdown() -> None:
    deployments = _deployments()
    assert set(deployments) == {"clip-service", "clip-service-gpu"}
    for dep in deployments.values():
        pod = dep["spec"]["template"]["spec"]
        container = pod["containers"][0]
        assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["ports"][0]["containerPort"] == 3000
        assert {"cpu", "memory"} <= set(container["resources"]["requests"])
        assert {"cpu", "memory"} <= set(container["resources"]["limits"])
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["terminationGracePeriodSeconds"] >= 30
    gpu = deployments["clip-service-gpu"]["spec"]["template"]["spec"]["containers"][0]
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_hpa_and_service_target_the_deployment() -> None:
    docs = [d for p in MANIFESTS for d in _docs(p)]
    hpa = next(d for d in docs if d["kind"] == "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "clip-service"
    svc = next(d for d in docs if d["kind"] == "Service")
    labels = _deployments()["clip-service"]["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items()
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert all((K8S / r).is_file() for r in kustomization["resources"])


def test_validator_rejects_a_broken_manifest() -> None:
    dep = _deployments()["clip-service"]
    dep["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "three thousand"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(dep, VERSION, strict=True)


def _bytes(quantity: str) -> float:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "K": 1e3, "M": 1e6, "G": 1e9}
    for unit, factor in units.items():
        if quantity.endswith(unit):
            return float(quantity[: -len(unit)]) * factor
    return float(quantity)


def test_the_cpu_pod_fits_the_measured_slim_image() -> None:
    """Read-only root with a writable /tmp, as the image was measured; memory above every measured peak."""
    report = json.loads(CONTAINER_REPORT.read_text())
    pod = _deployments()["clip-service"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    tmp = next(m for m in container["volumeMounts"] if m["mountPath"] == "/tmp")
    assert any(v["name"] == tmp["name"] and "emptyDir" in v for v in pod["volumes"])
    peaks_mb = [r["container"]["rss"]["peak_tree_mb"] for r in report["rounds"]]
    idle_mb = [r["container"]["rss"]["idle_mb"]["tree"] for r in report["rounds"]]
    resources = container["resources"]
    assert _bytes(resources["limits"]["memory"]) > max(*peaks_mb, report["first_start"]["peak_tree_mb"]) * 1e6
    assert _bytes(resources["requests"]["memory"]) >= max(idle_mb) * 1e6
    assert container["image"].startswith("clip-service:")
