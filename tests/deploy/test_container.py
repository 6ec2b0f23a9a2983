"""The container files, checked without a Docker engine (the suite needs none; the image was
built and the stack run with deploy/check_image.sh, see docs/deploy.md): compose.yaml parses
and everything it references exists (services, env files, healthchecks, volumes, the mounted
config), the Dockerfile's stages, pins, user and healthcheck are as documented, the image's
entry point is a real CLI command that accepts its arguments, and the offline/check overrides
the script uses name files that exist."""

from __future__ import annotations

import copy
import importlib.resources
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import jsonschema
import orjson
import pytest
import yaml

from distillguard.config import ENV_PREFIX, Settings, file_fields, load_settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) per Dockerfile instruction, continuation lines joined."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def _env_file_vars(path: Path) -> dict[str, str]:
    pairs = [line.split("=", 1) for line in path.read_text().splitlines() if "=" in line]
    return {k.strip(): v.strip() for k, v in pairs if not k.lstrip().startswith("#")}


def _compose_problems(document: dict) -> list[str]:
    """What the Compose Specification's JSON schema (shipped with check-jsonschema, no network
    needed) finds wrong in a compose document."""
    vendor = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    schema = orjson.loads((vendor / "compose-spec.json").read_bytes())
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [error.message for error in validator.iter_errors(document)]


def test_compose_file_follows_the_compose_specification(compose: dict) -> None:
    assert _compose_problems(compose) == []
    # the validator does refuse a mistake docker compose would refuse
    typo = copy.deepcopy(compose)
    typo["services"]["gateway"]["healthchek"] = typo["services"]["gateway"].pop("healthcheck")
    assert _compose_problems(typo) == [
        "Unevaluated properties are not allowed ('healthchek' was unexpected)"
    ]


def test_compose_has_the_three_services_with_healthchecks(compose: dict) -> None:
    services = compose["services"]
    assert set(services) == {"gateway", "postgres", "redis"}
    for name, service in services.items():
        check = service["healthcheck"]["test"]
        assert check[0] in ("CMD", "CMD-SHELL") and len(check) > 1, name
    gateway = services["gateway"]
    assert gateway["depends_on"] == {
        "postgres": {"condition": "service_healthy"},
        "redis": {"condition": "service_healthy"},
    }
    assert "/healthz" in " ".join(gateway["healthcheck"]["test"])
    assert gateway["environment"]["DISTILLGUARD_REDIS_URL"].startswith("redis://redis:")
    assert re.search(
        r"@postgres:5432/",
        _env_file_vars(ROOT / "deploy/gateway.env.example")["DISTILLGUARD_DATABASE_URL"],
    )


def test_compose_references_exist(compose: dict) -> None:
    declared = set(compose["volumes"])
    for name, service in compose["services"].items():
        for spec in service.get("volumes", []):
            source = spec.split(":", 1)[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in declared, f"{name} uses undeclared volume {source}"
        for env_file in service.get("env_file", []):
            # the real file holds secrets and is not committed: its example must be
            example = ROOT / f"{env_file['path']}.example"
            assert example.is_file(), f"{name} reads {env_file['path']}, no {example.name}"
    assert compose["services"]["gateway"]["build"] == "."
    assert (ROOT / "Dockerfile").is_file()
    # no ${VAR} left for the shell to fill: what compose needs is in the files above
    assert not re.search(r"(?<!\$)\$\{", (ROOT / "compose.yaml").read_text())


def test_env_examples_name_only_real_settings() -> None:
    gateway = _env_file_vars(ROOT / "deploy/gateway.env.example")
    fields = set(Settings.model_fields)
    from_files = {f"{name}_file" for name in file_fields()}
    for variable in gateway:
        assert variable.startswith(ENV_PREFIX), variable
        name = variable[len(ENV_PREFIX) :].lower()
        assert name in fields or name in from_files, f"{variable} is not a setting"
    postgres = _env_file_vars(ROOT / "deploy/postgres.env.example")
    assert set(postgres) == {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"}
    # the gateway's URL names the user and database PostgreSQL creates
    url = gateway["DISTILLGUARD_DATABASE_URL"]
    assert f"//{postgres['POSTGRES_USER']}:" in url and url.endswith(f"/{postgres['POSTGRES_DB']}")


def test_example_config_file_loads(monkeypatch) -> None:
    for name in ("DISTILLGUARD_HOST", "DISTILLGUARD_PORT"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings(ROOT / "deploy/distillguard.toml")
    assert settings.upstream_url and settings.host == "0.0.0.0"
    assert settings.admin_token is None  # no secret in the file


def test_dockerfile_stages_pins_and_user(dockerfile: list[tuple[str, str]]) -> None:
    froms = [args for op, args in dockerfile if op == "FROM"]
    assert froms == ["${BASE_IMAGE} AS builder", "${BASE_IMAGE}"]
    build_args = dict(arg.split("=", 1) for op, arg in dockerfile if op == "ARG" and "=" in arg)
    # the default base is the public python image of the Debian release the offline base uses
    assert build_args["BASE_IMAGE"] == "python:3.11-slim-bookworm"
    assert dockerfile[0] == ("ARG", "BASE_IMAGE=python:3.11-slim-bookworm")  # before FROM
    runs = " ".join(args for op, args in dockerfile if op == "RUN")
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    torch_pin = next(d for d in pyproject["project"]["dependencies"] if d.startswith("torch=="))
    assert f'pip install {torch_pin} --index-url "$TORCH_INDEX_URL"' in runs
    assert build_args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    assert "torch.version.cuda" in runs  # a CUDA wheel fails the build instead of shipping
    # pip's mirror variables are build arguments without a value: unset unless passed
    assert {"PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS"} <= {
        arg for op, arg in dockerfile if op == "ARG"
    }
    # python3 -m venv works on both bases (official image and Debian's python3 + venv)
    assert runs.count("python3 -m venv") == 2
    assert "pip wheel" in runs  # the wheel is built in the builder stage
    assert any(op == "COPY" and args.startswith("--from=builder") for op, args in dockerfile)
    users = [args for op, args in dockerfile if op == "USER"]
    assert users and users[-1] not in ("root", "0")
    health = next(args for op, args in dockerfile if op == "HEALTHCHECK")
    assert "/healthz" in health
    for op, args in dockerfile:
        if op == "COPY" and not args.startswith("--from"):
            for source in shlex.split(args)[:-1]:
                assert (ROOT / source).exists(), f"COPY {source}: missing"


def test_dockerignore_keeps_secrets_out_and_sources_in() -> None:
    rules = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert rules[0] == "*"  # everything out, then only what the image needs back in
    assert {"!pyproject.toml", "!README.md", "!src", "!deploy/distillguard.toml"} <= set(rules)
    assert not any("env" in rule for rule in rules if rule.startswith("!"))


def test_image_entry_point_is_a_real_command(
    dockerfile: list[tuple[str, str]], compose: dict
) -> None:
    entry = orjson.loads(next(args for op, args in dockerfile if op == "ENTRYPOINT"))
    command = orjson.loads(next(args for op, args in dockerfile if op == "CMD"))
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert entry == ["distillguard"] and "distillguard" in pyproject["project"]["scripts"]
    for arguments in (command, compose["services"]["gateway"]["command"]):
        # --help after the real arguments: typer parses them all and fails on an unknown one
        done = subprocess.run(
            [sys.executable, "-m", "distillguard", *arguments, "--help"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert "--config" in done.stdout


class _ComposeTagLoader(yaml.SafeLoader):
    """YAML with compose's merge tags (!override, !reset), which safe_load refuses."""


for _tag in ("!override", "!reset"):
    _ComposeTagLoader.add_constructor(
        _tag,
        lambda loader, node: (
            loader.construct_sequence(node)
            if isinstance(node, yaml.SequenceNode)
            else loader.construct_mapping(node)
            if isinstance(node, yaml.MappingNode)
            else loader.construct_scalar(node)
        ),
    )


def _override(name: str) -> dict:
    return yaml.load((ROOT / "deploy" / name).read_text(), Loader=_ComposeTagLoader)


def test_offline_override_builds_both_services_from_files_that_exist(compose: dict) -> None:
    offline = _override("compose.offline.yaml")
    assert set(offline["services"]) == {"postgres", "redis"} <= set(compose["services"])
    for name, service in offline["services"].items():
        # paths in an override are relative to the project directory (compose.yaml's)
        context = ROOT / service["build"]["context"]
        dockerfile = context / service["build"]["dockerfile"]
        assert dockerfile.is_file(), name
        entry = orjson.loads(
            next(
                line for line in dockerfile.read_text().splitlines() if line.startswith("ENTRY")
            ).split(None, 1)[1]
        )
        script = context / Path(entry[0]).name
        assert script.is_file() and script.stat().st_mode & 0o111, f"{script} not executable"
        done = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert service["image"] != compose["services"][name]["image"]  # never the public tag
    # the PostgreSQL stand-in reads the official image's variables (deploy/postgres.env)
    entry = (ROOT / "deploy/offline/postgres-entrypoint.sh").read_text()
    for variable in _env_file_vars(ROOT / "deploy/postgres.env.example"):
        assert variable in entry


def test_check_override_engine_is_the_ci_stub_at_the_configured_upstream(compose: dict) -> None:
    check = _override("compose.check.yaml")
    engine = check["services"]["engine"]
    source, target, _mode = engine["volumes"][0].split(":")
    assert (ROOT / source).is_file() and target.endswith(Path(source).name)
    # the entry point uses the stub's handler and server class on the port the config names
    stub = (ROOT / source).read_text()
    assert "class Handler(" in stub and "ThreadingHTTPServer" in stub
    config = tomllib.loads((ROOT / "deploy/distillguard.toml").read_text())
    assert config["upstream_url"] == "http://engine:8000/v1"
    assert "('0.0.0.0', 8000)" in " ".join(engine["entrypoint"])
    # the stub marks nothing: the gateway must be told so, or it refuses to start
    gateway = check["services"]["gateway"]
    assert gateway["environment"]["DISTILLGUARD_UPSTREAM_ENGINE"] == "none"
    assert gateway["environment"]["DISTILLGUARD_WATERMARK_SCHEME"] == "off"
    assert engine["image"] == compose["services"]["gateway"]["image"]


def test_check_script_parses() -> None:
    script = ROOT / "deploy/check_image.sh"
    assert script.stat().st_mode & 0o111
    done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
