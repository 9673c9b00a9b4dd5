"""The Helm chart, linted and rendered by real Helm (helm-python-sdk embeds it; offline) and every rendered
manifest validated against the Kubernetes schemas (kubernetes-validate, strict: unknown fields fail)."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from services.core.config import EDGE_PORT, METRICS_PORT_OFFSET, SERVICES, Settings
from tests.infra.conftest import IMAGE_VARIABLES, INFRA, settings_from

CHART = INFRA / "helm" / "launchpad"
LIVE_VALUES = INFRA / "helm" / "values-live.yaml"
KUBE_VERSION = "1.33.0"
RELEASE = "lp"
FULLNAME = f"{RELEASE}-launchpad"  # the ConfigMap and ServiceAccount
# Variables whose values are secrets: only ever secretKeyRef, never a literal value.
SECRET_VARIABLES = frozenset(
    {
        "POSTGRES_DSN",
        "REDIS_URL",
        "MINIO_ACCESS_KEY",
        "MINIO_SECRET_KEY",
        "VAULT_TOKEN",
        "LAUNCHPAD_ADMIN_PASSWORD",
        "LAUNCHPAD_TENANT_DB_SECRET",
        "LAUNCHPAD_STORAGE_URL_SECRET",
        "COSIGN_PASSWORD",
        "LAUNCHPAD_INTERNAL_SECRET",
        "OPENAI_KEY",
    }
)
LLM_VARIABLES = frozenset({"OPENAI_KEY", "OPENAI_BASE_URL", "OPENAI_MODEL", "LAUNCHPAD_AI_TIMEOUT_MS"})
Manifests = dict[tuple[str, str], dict[str, Any]]


def render_files(values: dict[str, Any] | None = None) -> dict[str, str]:
    """Template path -> the text Helm renders from it with these values."""
    with helm.Chart.load(CHART) as chart:
        return chart.render(values, name=RELEASE, namespace="launchpad")


def render(values: dict[str, Any] | None = None) -> Manifests:
    """(kind, name) -> manifest, for every document the chart renders with these values."""
    out: Manifests = {}
    for path, text in render_files(values).items():
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                key = (doc["kind"], doc["metadata"]["name"])
                assert key not in out, f"{key} rendered twice"
                out[key] = doc
    return out


def live_values() -> dict[str, Any]:
    return yaml.safe_load(LIVE_VALUES.read_text())


def kafka_values() -> dict[str, Any]:
    values = live_values()
    values["realtime"] = {"backend": "kafka"}
    values["dependencies"]["kafka"] = {"url": "kafka-0.kafka:9092,kafka-1.kafka:9092"}
    return values


VARIANTS = {"default": lambda: None, "live": live_values, "kafka": kafka_values}


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def rendered(request: pytest.FixtureRequest) -> Iterator[tuple[dict[str, Any], Manifests]]:
    values = VARIANTS[request.param]()
    with helm.Chart.load(CHART) as chart:
        merged = chart.merge_values(values)
    yield merged, render(values)


def component(name: str) -> str:
    return f"{FULLNAME}-{name}"


def pod_spec(manifests: Manifests, name: str) -> dict[str, Any]:
    return manifests[("Deployment", component(name))]["spec"]["template"]["spec"]


def container(manifests: Manifests, name: str) -> dict[str, Any]:
    (only,) = pod_spec(manifests, name)["containers"]
    return only


def env_of(manifests: Manifests, name: str) -> dict[str, dict[str, Any]]:
    entries = container(manifests, name)["env"]
    by_name = {entry["name"]: entry for entry in entries}
    assert len(by_name) == len(entries), f"{name} sets a variable twice"
    return by_name


def test_lint_is_clean() -> None:
    for values in (None, live_values(), kafka_values()):
        report = helm.lint(CHART, values, strict=True, kube_version=f"v{KUBE_VERSION}")
        assert report["errors"] == []
        problems = [m for m in report["messages"] if m["severity"] >= 2]
        assert problems == [], problems


def test_every_manifest_matches_the_kubernetes_schema(rendered: tuple[dict, Manifests]) -> None:
    _, manifests = rendered
    assert manifests
    for (kind, name), doc in manifests.items():
        try:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{kind}/{name}: {'.'.join(map(str, exc.path))}: {exc.message}")


def test_every_backend_has_a_deployment_and_a_service(rendered: tuple[dict, Manifests]) -> None:
    values, manifests = rendered
    assert set(values["backends"]) == set(SERVICES)
    for name, port in SERVICES.items():
        assert values["backends"][name]["port"] == port  # the chart's ports are the documented ones
        deployment = manifests[("Deployment", component(name))]
        service = manifests[("Service", component(name))]
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
        assert service["spec"]["selector"].items() <= pod_labels.items()
        assert service["spec"]["selector"]["app.kubernetes.io/component"] == name
        assert deployment["spec"]["replicas"] == values["backends"][name]["replicas"]
        c = container(manifests, name)
        assert c["image"] == f"{values['image']['repository']}-{name}:{values['image']['tag'] or '0.1.0'}"
        assert {p["name"]: p["containerPort"] for p in c["ports"]} == {
            "grpc": port,
            "metrics": port + METRICS_PORT_OFFSET,
        }
        assert {p["name"]: (p["port"], p["targetPort"]) for p in service["spec"]["ports"]} == {
            "grpc": (port, "grpc"),
            "metrics": (port + METRICS_PORT_OFFSET, "metrics"),
        }
    deployments = {name for kind, name in manifests if kind == "Deployment"}
    assert deployments == {component(n) for n in (*SERVICES, "edge")}


def test_backends_have_native_grpc_probes_on_their_port(rendered: tuple[dict, Manifests]) -> None:
    _, manifests = rendered
    for name, port in SERVICES.items():
        c = container(manifests, name)
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert c[probe]["grpc"] == {"port": port}, (name, probe)
            assert "httpGet" not in c[probe] and "tcpSocket" not in c[probe]


def test_edge_has_http_probes_and_a_service(rendered: tuple[dict, Manifests]) -> None:
    values, manifests = rendered
    c = container(manifests, "edge")
    assert c["ports"] == [{"name": "http", "containerPort": EDGE_PORT, "protocol": "TCP"}]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/metrics", "port": "http"}
    service = manifests[("Service", component("edge"))]
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert service["spec"]["selector"]["app.kubernetes.io/component"] == "edge"
    assert env_of(manifests, "edge")["LAUNCHPAD_SERVICE"]["value"] == "edge"
    if values["dependencies"]["redis"]["enabled"]:
        assert required(env_of(manifests, "edge")["REDIS_URL"])


def test_pods_are_non_root_and_read_only(rendered: tuple[dict, Manifests]) -> None:
    _, manifests = rendered
    config_map = manifests[("ConfigMap", FULLNAME)]["data"]
    writable = {config_map["LAUNCHPAD_DATA_DIR"], config_map["LAUNCHPAD_LOG_DIR"], "/tmp"}
    for name in (*SERVICES, "edge"):
        pod = pod_spec(manifests, name)
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        assert pod["automountServiceAccountToken"] is False
        c = container(manifests, name)
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
        assert "requests" in c["resources"] and "limits" in c["resources"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
        assert writable <= mounts.keys(), name  # every path the code writes is a volume
        for path in writable:
            assert "secret" not in volumes[mounts[path]["name"]]
        for mount in mounts.values():
            if "secret" in volumes[mount["name"]]:
                assert mount.get("readOnly") is True


def test_no_secret_value_is_rendered(rendered: tuple[dict, Manifests]) -> None:
    values, manifests = rendered
    assert not any(kind == "Secret" for kind, _ in manifests)
    config_map = manifests[("ConfigMap", FULLNAME)]["data"]
    assert not SECRET_VARIABLES & config_map.keys()
    for name in (*SERVICES, "edge"):
        for variable, entry in env_of(manifests, name).items():
            if variable in SECRET_VARIABLES:
                assert "value" not in entry, (name, variable)
                ref = entry["valueFrom"]["secretKeyRef"]
                assert ref == {**ref, "name": values["secrets"]["existingSecret"], "key": variable}


def required(entry: dict[str, Any]) -> bool:
    return entry["valueFrom"]["secretKeyRef"]["optional"] is False


def test_every_process_gets_the_shared_internal_secret(rendered: tuple[dict, Manifests]) -> None:
    # Pods share no data dir: without one secret from the Secret, each would make its own and the edge's
    # relay calls to realtime would be refused.
    _, manifests = rendered
    for name in (*SERVICES, "edge"):
        assert required(env_of(manifests, name)["LAUNCHPAD_INTERNAL_SECRET"]), name


def test_the_openai_key_is_only_an_optional_secret_reference_on_ai(rendered: tuple[dict, Manifests]) -> None:
    values, manifests = rendered
    # Optional: a Secret without the key runs the embedded generator instead of stopping the pod.
    assert env_of(manifests, "ai")["OPENAI_KEY"] == {
        "name": "OPENAI_KEY",
        "valueFrom": {
            "secretKeyRef": {
                "name": values["secrets"]["existingSecret"],
                "key": "OPENAI_KEY",
                "optional": True,
            }
        },
    }
    assert "OPENAI_KEY" not in manifests[("ConfigMap", FULLNAME)]["data"]
    for name in (*SERVICES, "edge"):
        if name != "ai":  # least privilege: no other process gets the key or the model's settings
            assert not LLM_VARIABLES & env_of(manifests, name).keys(), name


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_no_rendered_line_carries_a_key_value(variant: str) -> None:
    files = render_files(VARIANTS[variant]())
    mentions = [
        line.strip()
        for path, text in files.items()
        if not path.endswith("NOTES.txt")
        for line in text.splitlines()
        if "OPENAI_KEY" in line
    ]
    # The variable's name and the Secret's key name, nothing else: no `OPENAI_KEY: ...`, no `value:` for it.
    assert sorted(mentions) == ["- name: OPENAI_KEY", "key: OPENAI_KEY"]


def _ai_settings(manifests: Manifests, secret: dict[str, str]) -> Settings:
    """The ai pod's settings as config.py reads them, given what the Secret holds (only keys it references)."""
    environ = dict(manifests[("ConfigMap", FULLNAME)]["data"])
    for variable, entry in env_of(manifests, "ai").items():
        if "value" in entry:
            environ[variable] = entry["value"]
        elif entry["valueFrom"]["secretKeyRef"]["key"] in secret:
            environ[variable] = secret[entry["valueFrom"]["secretKeyRef"]["key"]]
    return settings_from(environ, "ai")


def test_the_model_settings_reach_the_ai_service_as_config_reads_them() -> None:
    internal = {"LAUNCHPAD_INTERNAL_SECRET": "x" * 64}
    defaults = settings_from({}, "ai")
    # The chart's defaults are the code's, and without the key the embedded generator answers.
    embedded = _ai_settings(render(), internal)
    assert embedded.ai.key.reveal() == ""
    assert (embedded.ai.base_url, embedded.ai.model, embedded.ai.timeout_ms) == (
        defaults.ai.base_url,
        defaults.ai.model,
        defaults.ai.timeout_ms,
    )
    llm = {"baseUrl": "http://ollama.ml:11434/v1/", "model": "llama3.1", "timeoutMs": 1000000}
    live = _ai_settings(render({"dependencies": {"llm": llm}}), {**internal, "OPENAI_KEY": "sk-from-secret"})
    assert (live.ai.key.reveal(), live.ai.base_url, live.ai.model, live.ai.timeout_ms) == (
        "sk-from-secret",
        "http://ollama.ml:11434/v1",
        "llama3.1",
        1000000,  # not 1e+06: Helm reads numbers as floats
    )


def test_dependencies_are_required_secrets_where_configured() -> None:
    manifests = render(live_values())
    # storage and realtime read the tenant's policies from the platform database
    for name in ("data", "auth", "deploy", "storage", "realtime"):
        assert required(env_of(manifests, name)["POSTGRES_DSN"])
    # Tenant role passwords derive from it: every data replica must use the same one.
    assert required(env_of(manifests, "data")["LAUNCHPAD_TENANT_DB_SECRET"])
    for name in ("storage", "deploy"):
        env = env_of(manifests, name)
        assert env["MINIO_ENDPOINT"]["value"] == "https://s3.example.com"
        assert required(env["MINIO_SECRET_KEY"])
    assert required(env_of(manifests, "deploy")["VAULT_TOKEN"])
    # Least privilege: a service gets only the secrets of the dependencies it uses.
    assert "POSTGRES_DSN" not in env_of(manifests, "metrics")
    assert "VAULT_TOKEN" not in env_of(manifests, "data")
    assert "MINIO_SECRET_KEY" not in env_of(manifests, "edge")
    # The shared JWT key is a mounted Secret file, and the auth service is told where.
    auth_env = env_of(manifests, "auth")
    key_path = auth_env["LAUNCHPAD_JWT_KEY_PATH"]["value"]
    mounts = {m["name"]: m["mountPath"] for m in container(manifests, "auth")["volumeMounts"]}
    assert key_path.startswith(mounts["jwt-key"] + "/")


def test_embedded_defaults_pass_no_dependency_variables() -> None:
    manifests = render()
    for name in SERVICES:
        env = env_of(manifests, name)
        assert not ({"POSTGRES_DSN", "REDIS_URL", "KAFKA_URL", "MINIO_ENDPOINT", "VAULT_ADDR"} & env.keys())


def test_hpa_targets_the_edge(rendered: tuple[dict, Manifests]) -> None:
    values, manifests = rendered
    hpa = manifests[("HorizontalPodAutoscaler", component("edge"))]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": component("edge"),
    }
    assert ("Deployment", component("edge")) in manifests
    assert hpa["spec"]["minReplicas"] == values["edge"]["autoscaling"]["minReplicas"]
    # The HPA owns the replica count: a fixed one would fight it on every upgrade.
    assert "replicas" not in manifests[("Deployment", component("edge"))]["spec"]
    # CPU utilization needs a CPU request to compute against.
    assert container(manifests, "edge")["resources"]["requests"]["cpu"]


def test_edge_without_autoscaling_has_fixed_replicas_and_no_hpa() -> None:
    manifests = render({"edge": {"autoscaling": {"enabled": False}, "replicas": 3}})
    assert not any(kind == "HorizontalPodAutoscaler" for kind, _ in manifests)
    assert manifests[("Deployment", component("edge"))]["spec"]["replicas"] == 3


def test_config_map_wires_every_process_to_the_services(rendered: tuple[dict, Manifests]) -> None:
    _, manifests = rendered
    data = manifests[("ConfigMap", FULLNAME)]["data"]
    assert data["LAUNCHPAD_BACKENDS"] == ",".join(SERVICES)  # port order, as config.built_services
    assert data["LAUNCHPAD_HOST"] == "0.0.0.0"
    for name, port in SERVICES.items():
        assert data[f"LAUNCHPAD_{name.upper()}_ADDR"] == f"{component(name)}:{port}"
        assert ("Service", component(name)) in manifests
    for name in (*SERVICES, "edge"):
        assert container(manifests, name)["envFrom"] == [{"configMapRef": {"name": FULLNAME}}]


def test_every_variable_the_chart_sets_is_one_the_code_reads(
    rendered: tuple[dict, Manifests], config_variables: frozenset[str]
) -> None:
    _, manifests = rendered
    names = set(manifests[("ConfigMap", FULLNAME)]["data"])
    for name in (*SERVICES, "edge"):
        names |= env_of(manifests, name).keys()
    assert names - config_variables - IMAGE_VARIABLES == set()


def test_realtime_fans_out_through_redis_or_kafka() -> None:
    redis = render(live_values())
    assert redis[("Deployment", component("realtime"))]["spec"]["replicas"] == 3
    assert required(env_of(redis, "realtime")["REDIS_URL"])
    assert "KAFKA_URL" not in env_of(redis, "realtime")

    kafka = render(kafka_values())
    env = env_of(kafka, "realtime")
    assert env["KAFKA_URL"]["value"] == "kafka-0.kafka:9092,kafka-1.kafka:9092"
    assert "REDIS_URL" not in env  # one backend for every replica: realtime must not pick per pod


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"backends": {"realtime": {"replicas": 2}}}, "needs realtime.backend=redis or kafka"),
        ({"realtime": {"backend": "redis"}}, "needs dependencies.redis.enabled=true"),
        ({"realtime": {"backend": "kafka"}}, "needs dependencies.kafka.url"),
        ({"realtime": {"backend": "nats"}}, "must be embedded, redis or kafka"),
        ({"backends": {"data": {"replicas": 2}}}, "backends.data.replicas=2 needs dependencies.postgres"),
        ({"backends": {"storage": {"replicas": 3}}}, "needs dependencies.objectStorage.endpoint"),
        (
            {"backends": {"auth": {"replicas": 2}}, "dependencies": {"postgres": {"enabled": True}}},
            "needs secrets.jwtSigningKey.secretName",
        ),
        ({"config": {"POSTGRES_DSN": "postgresql://u:pw@db/x"}}, "looks like a secret"),
        ({"config": {"VAULT_TOKEN": "s.abc"}}, "looks like a secret"),
        ({"config": {"OPENAI_KEY": "sk-in-values"}}, "config.OPENAI_KEY looks like a secret"),
        ({"dependencies": {"llm": {"baseUrl": "api.openai.com/v1"}}}, "must be an http(s):// URL"),
        ({"dependencies": {"llm": {"model": ""}}}, "dependencies.llm.model must name a model"),
        ({"dependencies": {"llm": {"timeoutMs": 0}}}, "timeoutMs must be a positive number"),
    ],
)
def test_combinations_that_cannot_work_fail_to_render(override: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmError, match=re.escape(message)):
        render(override)


def test_several_realtime_replicas_without_a_shared_backend_fail_even_when_live() -> None:
    values = copy.deepcopy(live_values())
    values["realtime"] = {"backend": "embedded"}
    with pytest.raises(helm.HelmError, match=re.escape("replicas=3 needs realtime.backend=redis or kafka")):
        render(values)


def test_notes_tell_how_to_reach_the_edge() -> None:
    notes = render_files()["launchpad/templates/NOTES.txt"]
    assert f"svc/{component('edge')}" in notes
    assert "in-process broker" in notes
    assert "holds OPENAI_KEY; without that key its embedded SQL generator answers" in notes
