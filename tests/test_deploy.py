"""Container and Kubernetes files: linted, schema-validated, and consistent with the server.

No Docker engine or cluster is needed: hadolint lints the Dockerfile, kubernetes-validate checks
every manifest against pinned Kubernetes schemas (strict: unknown fields fail), and the rest
cross-checks paths, ports, users and probes between the Dockerfile, docker-compose.yaml, the
manifests, the models list loader and the Flask app itself.
"""

from __future__ import annotations

import copy
import json
import posixpath
import re
import shlex
import subprocess
import sys
from pathlib import Path, PurePosixPath

import pytest
import yaml

from zeroth.models_list import load_models_list, parse_models_list
from zeroth.settings import Settings, env_name

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"
COMPOSE = REPO / "docker-compose.yaml"
K8S = REPO / "deploy" / "k8s"
# The oldest minor these manifests claim to support, and the newest the package knows.
K8S_VERSIONS = ("1.33.0", "1.37.0")
KUSTOMIZATION = "kustomization.yaml"
MANIFESTS = sorted(p.name for p in K8S.glob("*.yaml") if p.name != KUSTOMIZATION)
# The venv's bin folder (not resolved: sys.executable may be a link to the system Python).
BIN = Path(sys.executable).parent


# --- Dockerfile parsing (just enough for the checks below) ---------------------------------


def dockerfile_instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += stripped
        keyword, _, rest = buf.partition(" ")
        out.append((keyword.upper(), rest.strip()))
        buf = ""
    assert not buf, "Dockerfile ends inside a continued line"
    return out


def dockerfile_stages(path: Path = DOCKERFILE) -> dict[str, dict]:
    """Stage name -> {"parent": stage name or None, "instructions": [...]}."""
    stages: dict[str, dict] = {}
    current = None
    for keyword, rest in dockerfile_instructions(path):
        if keyword == "FROM":
            m = re.fullmatch(r"(?:--\S+\s+)*(\S+)\s+AS\s+(\S+)", rest, re.IGNORECASE)
            assert m, f"every stage is named: FROM {rest}"
            parent, name = m.groups()
            current = stages[name] = {
                "parent": parent if parent in stages else None,
                "instructions": [],
            }
        elif current is not None:
            current["instructions"].append((keyword, rest))
    return stages


def stage_chain(stages: dict[str, dict], name: str) -> list[dict]:
    chain = []
    while name is not None:
        chain.append(stages[name])
        name = stages[name]["parent"]
    return chain[::-1]


def stage_env(stages: dict[str, dict], name: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for stage in stage_chain(stages, name):
        for keyword, rest in stage["instructions"]:
            if keyword == "ENV":
                for item in shlex.split(rest):
                    key, _, value = item.partition("=")
                    env[key] = value
    return env


def stage_last(stages: dict[str, dict], name: str, keyword: str) -> str | None:
    value = None
    for stage in stage_chain(stages, name):
        for kw, rest in stage["instructions"]:
            if kw == keyword:
                value = rest
    return value


def image_path_of(stages: dict[str, dict], stage: str, source: str) -> str:
    """Where `COPY [--from=...] SOURCE DEST` in `stage` puts SOURCE (DEST against WORKDIR)."""
    workdir = "/"
    for keyword, rest in stage_chain(stages, stage)[-1]["instructions"]:
        if keyword == "WORKDIR":
            workdir = posixpath.join(workdir, rest)
        elif keyword == "COPY":
            args = [a for a in rest.split() if not a.startswith("--")]
            if source in args[:-1]:
                return posixpath.normpath(posixpath.join(workdir, args[-1]))
    raise AssertionError(f"stage {stage} copies no {source}")


def extract_commands(commands: str) -> list[tuple[str, str]]:
    """(source, --out folder) of each `python -m extract SOURCE ... --out DIR` in shell text."""
    found = []
    for command in re.split(r"&&|;|\n", commands):
        words = shlex.split(command)
        if "extract" in words and words[words.index("extract") - 1] == "-m":
            source = words[words.index("extract") + 1]
            found.append((source, words[words.index("--out") + 1]))
    return found


@pytest.fixture(scope="module")
def stages() -> dict[str, dict]:
    return dockerfile_stages()


@pytest.fixture(scope="module")
def image_env(stages) -> dict[str, str]:
    return stage_env(stages, "cpu")


def bind_port(env: dict[str, str]) -> int:
    return int(env["ZEROTH_BIND"].rpartition(":")[2])


# --- Manifests ------------------------------------------------------------------------------


def load_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@pytest.fixture(scope="module")
def objects() -> dict[str, dict]:
    """Kind -> the object (one of each kind here)."""
    out: dict[str, dict] = {}
    for name in MANIFESTS:
        for doc in load_docs(K8S / name):
            assert doc["kind"] not in out, f"two {doc['kind']} objects"
            out[doc["kind"]] = doc
    return out


@pytest.fixture(scope="module")
def container(objects) -> dict:
    (c,) = objects["Deployment"]["spec"]["template"]["spec"]["containers"]
    return c


def container_env(container: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def seconds(value: str | int) -> int:
    if isinstance(value, int):
        return value
    m = re.fullmatch(r"(\d+)s", value)
    assert m, f"duration in seconds expected, got {value!r}"
    return int(m.group(1))


# --- Lint and schema validation -------------------------------------------------------------


def test_hadolint_finds_nothing() -> None:
    hadolint = BIN / "hadolint"
    assert hadolint.is_file(), f"{hadolint} missing: pip install -r requirements-dev.txt"
    proc = subprocess.run(
        [str(hadolint), "--config", str(REPO / ".hadolint.yaml"), "--format", "json"]
        + [str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    findings = json.loads(proc.stdout or "[]")
    assert findings == [], "\n".join(
        f"Dockerfile:{f['line']} {f['code']} {f['level']}: {f['message']}" for f in findings
    )
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("name", MANIFESTS)
def test_manifest_validates_strictly(name: str, version: str) -> None:
    from kubernetes_validate.utils import validate

    docs = load_docs(K8S / name)
    assert docs, f"{name} holds no object"
    for doc in docs:
        # SchemaNotFoundError (an unknown kind/apiVersion) raises too: the CLI only warns.
        validate(doc, version, strict=True)


def test_strict_validation_rejects_unknown_fields(objects) -> None:
    """The check above can fail: a misspelt field is an error, not ignored."""
    from kubernetes_validate.utils import ValidationError, validate

    bad = copy.deepcopy(objects["Deployment"])
    bad["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"httpGet": {}}
    with pytest.raises(ValidationError):
        validate(bad, K8S_VERSIONS[0], strict=True)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / KUSTOMIZATION).read_text())
    assert sorted(kustomization["resources"]) == MANIFESTS


# --- Models list ----------------------------------------------------------------------------


def test_configmap_models_list_loads_and_resolves_into_the_image(
    tmp_path: Path, objects, container, stages
) -> None:
    configmap = objects["ConfigMap"]
    models_list = PurePosixPath(container_env(container)["MODELS_LIST"])
    # The ConfigMap is mounted as a folder at MODELS_LIST's parent, with its file name.
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == str(models_list.parent)]
    (volume,) = [
        v
        for v in objects["Deployment"]["spec"]["template"]["spec"]["volumes"]
        if v["name"] == mount["name"]
    ]
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    (item,) = volume["configMap"]["items"]
    assert item["path"] == models_list.name

    # Loaded by the server's own loader (validates, opens no checkpoint).
    path = tmp_path / models_list.name
    path.write_text(configmap["data"][item["key"]])
    served = load_models_list(path)
    image_models = image_path_of(stages, "app", "/build/models/")
    ((_, built),) = extract_commands(
        " ".join(rest for kw, rest in stages["model"]["instructions"] if kw == "RUN")
    )
    expected = Path(image_models) / PurePosixPath(built).relative_to("models")
    assert served.default == "text-embedding-3-small"
    for alias in ("text-embedding-3-small", "text-embedding-ada-002"):
        assert served.models[alias].path == expected, alias

    # Same aliases and options as the repository's models_list.yaml when that file sits at
    # the image's MODELS_LIST (its relative paths then land in the same checkpoints).
    image_list = PurePosixPath(stage_env(stages, "cpu")["MODELS_LIST"])
    repo = parse_models_list(
        yaml.safe_load((REPO / "models_list.yaml").read_text()), Path(image_list.parent)
    )
    assert repo.default == served.default
    assert repo.models.keys() == served.models.keys()
    for alias, entry in repo.models.items():
        assert entry == served.models[alias], alias


# --- Dockerfile, .dockerignore, compose -----------------------------------------------------


def test_dockerfile_targets_and_runtime(stages, image_env) -> None:
    assert list(stages)[-1] == "cpu", "the default target (last stage) is the CPU image"
    assert {"cpu", "gpu"} <= stages.keys()
    for target in ("cpu", "gpu"):
        user = stage_last(stages, target, "USER")
        assert user and re.fullmatch(r"[1-9]\d*:\d+", user), f"{target}: numeric non-root USER"
        cmd = json.loads(stage_last(stages, target, "CMD"))
        assert cmd == ["gunicorn", "-c", "gunicorn.conf.py", "server:app"]
        assert image_env.items() <= stage_env(stages, target).items()
    assert stage_last(stages, "cpu", "EXPOSE") == str(bind_port(image_env))
    app_dir = image_path_of(stages, "app", "server.py")
    assert image_env["MODELS_LIST"] == posixpath.join(app_dir, "models_list.yaml")
    assert image_path_of(stages, "cpu", "/app") == app_dir
    health = stage_last(stages, "cpu", "HEALTHCHECK")
    assert "/health" in health and "ZEROTH_BIND" in health
    # CPU torch comes from PyTorch's CPU index, at requirements.txt's pin.
    deps = " ".join(rest for kw, rest in stages["deps-cpu"]["instructions"] if kw == "RUN")
    assert "https://download.pytorch.org/whl/cpu" in deps and "+cpu" in deps
    assert re.search(r"^torch==[0-9.]+$", (REPO / "requirements.txt").read_text(), re.M)


def test_image_builds_the_default_model_as_make_model_does(stages) -> None:
    """BUILD_DEFAULT_MODEL=1 bakes in what `make model` builds for `make serve`, from the
    same fetched source into the same folder, and the checked-in list serves that folder."""
    run = " ".join(rest for kw, rest in stages["model"]["instructions"] if kw == "RUN")
    planned = subprocess.run(
        ["make", "-n", "-B", "-C", str(REPO), "model"], capture_output=True, text=True, check=True
    ).stdout
    assert extract_commands(run) == extract_commands(planned) != []
    ((_, built),) = extract_commands(run)
    listed = parse_models_list(yaml.safe_load((REPO / "models_list.yaml").read_text()), REPO)
    assert listed.models[listed.default].path == REPO / built


def test_dockerignore_sends_only_what_is_copied(stages) -> None:
    lines = [
        ln.strip()
        for ln in (REPO / ".dockerignore").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    assert lines[0] == "*", "an allowlist: everything excluded first"
    allowed = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    for stage in stages.values():
        for keyword, rest in stage["instructions"]:
            if keyword == "COPY" and "--from=" not in rest:
                for source in rest.split()[:-1]:
                    assert source.rstrip("/") in allowed, f"COPY {source} is not in the context"
    for never in (".venv", ".cache", "models", ".git", "deploy", "bench", "tests"):
        assert never not in allowed


def compose_defaults(value: str) -> str:
    """`${VAR:-default}` -> default, as compose reads it with VAR unset."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)


def test_compose_matches_the_image(stages, image_env) -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    svc = compose["services"]["zeroth"]
    assert svc["build"]["target"] in stages
    assert svc["restart"] in ("always", "unless-stopped", "on-failure")
    env = {k: compose_defaults(str(v)) for k, v in svc["environment"].items()}
    assert env["MODELS_LIST"] == image_env["MODELS_LIST"]

    mounts = {}
    for spec in svc["volumes"]:
        source, target, *mode = compose_defaults(spec).split(":")
        mounts[target] = (source, mode)
    models_dir = image_path_of(stages, "app", "/build/models/")
    assert mounts[models_dir][1] == ["ro"], "models mounted read-only over the image's folder"
    assert mounts[env["MODELS_LIST"]] == ("./models_list.yaml", ["ro"])
    # The repository's list, at that path, points into the mounted folder.
    base = Path(PurePosixPath(env["MODELS_LIST"]).parent)
    listed = parse_models_list(yaml.safe_load((REPO / "models_list.yaml").read_text()), base)
    for alias, entry in listed.models.items():
        assert entry.path.is_relative_to(models_dir), alias

    (secret,) = svc["secrets"]
    assert env["ZEROTH_API_KEYS_FILE"] == f"/run/secrets/{secret}"
    secret_file = compose["secrets"][secret]["file"]
    assert secret_file.startswith("./deploy/secrets/")
    ignored = (REPO / "deploy" / "secrets" / ".gitignore").read_text().split()
    assert "*" in ignored, "real keys must not be committable"

    assert svc["user"] == stage_last(stages, "cpu", "USER")
    assert svc["read_only"] is True
    assert {"/tmp", image_env["PROMETHEUS_MULTIPROC_DIR"]} <= set(svc["tmpfs"])
    port = bind_port(image_env)
    assert any(compose_defaults(str(p)).endswith(f":{port}") for p in svc["ports"])
    test = " ".join(svc["healthcheck"]["test"])
    assert f"127.0.0.1:{port}/health" in test
    graceful = int(env.get("ZEROTH_GRACEFUL_TIMEOUT", 30))
    assert seconds(svc["stop_grace_period"]) > graceful


def test_every_variable_set_is_a_setting_and_valid(stages, container) -> None:
    """Settings.from_env ignores variables it does not know, so a misspelt ZEROTH_* in a
    deployment file would silently keep the default: each must be one of the settings."""
    known = {env_name(field) for field in Settings.model_fields}
    compose = yaml.safe_load(COMPOSE.read_text())
    # The server's own service; the optional nginx one's ZEROTH_PROXY_* fill its config template.
    svc = compose["services"]["zeroth"]
    envs = {
        "Dockerfile cpu": stage_env(stages, "cpu"),
        "Dockerfile gpu": stage_env(stages, "gpu"),
        "docker-compose.yaml": {k: compose_defaults(str(v)) for k, v in svc["environment"].items()},
        "deployment.yaml": container_env(container),
    }
    for where, env in envs.items():
        ours = {k for k in env if k.startswith("ZEROTH_") or k == "MODELS_LIST"}
        assert ours, where
        assert ours <= known, f"{where}: {sorted(ours - known)} are not settings"
        settings = Settings.from_env(env)  # a bad value raises ConfigError naming it
        if "ZEROTH_WORKERS" in env:
            assert settings.workers == int(env["ZEROTH_WORKERS"]), where


# --- Deployment and friends -----------------------------------------------------------------


def probes(container: dict) -> dict[str, dict]:
    return {
        kind: container[kind]["httpGet"]
        for kind in ("startupProbe", "livenessProbe", "readinessProbe")
        if kind in container
    }


def test_probe_paths_are_served_without_credentials(models_list: Path, container) -> None:
    from conftest import make_app

    paths = {p["path"] for p in probes(container).values()}
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    app = make_app(models_list, api_keys=("deploy-test-key",))
    routes = {rule.rule for rule in app.url_map.iter_rules()}
    client = app.test_client()
    for path in paths:
        assert path in routes, path
        assert client.get(path).status_code == 200, f"probe {path} without credentials"
    # The key check is really on: the probes pass because they are exempt, not because open.
    assert client.get("/v1/models").status_code == 401


def test_deployment_wiring(objects, container, stages, image_env) -> None:
    deployment = objects["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    env = container_env(container)

    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert objects["Service"]["spec"]["selector"].items() <= labels.items()
    assert objects["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= (
        labels.items()
    )
    target = objects["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"

    (port,) = container["ports"]
    assert port["containerPort"] == bind_port(env) == bind_port(image_env)
    assert {p["port"] for p in probes(container).values()} == {port["name"]}
    (svc_port,) = objects["Service"]["spec"]["ports"]
    assert svc_port["targetPort"] == port["name"]

    # Draining: preStop, then gunicorn's graceful timeout, both inside the grace period.
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    graceful = int(env.get("ZEROTH_GRACEFUL_TIMEOUT", 30))
    assert pod["terminationGracePeriodSeconds"] > pre_stop + graceful

    # Security: the image's numeric user, and a read-only root with writable scratch mounts.
    uid, gid = (int(x) for x in stage_last(stages, "cpu", "USER").split(":"))
    sc = container["securityContext"]
    assert (sc["runAsUser"], sc["runAsGroup"]) == (uid, gid)
    assert sc["runAsNonRoot"] and sc["readOnlyRootFilesystem"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
    for writable in ("/tmp", env["PROMETHEUS_MULTIPROC_DIR"]):
        assert "emptyDir" in mounts[writable], writable

    # API keys: a file from a Secret created out of band (no Secret object committed here).
    keys_dir = str(PurePosixPath(env["ZEROTH_API_KEYS_FILE"]).parent)
    secret = mounts[keys_dir]["secret"]
    assert secret["optional"] is False
    assert [i["path"] for i in secret["items"]] == [PurePosixPath(env["ZEROTH_API_KEYS_FILE"]).name]
    assert "Secret" not in objects

    resources = container["resources"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= resources[kind].keys()
