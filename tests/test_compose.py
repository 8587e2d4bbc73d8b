"""docker-compose files: valid against the Compose specification, pinned images, services the README names."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = Path(os.environ.get("SRAQ_COMPOSE_SCHEMA", ROOT.parent / "shared" / "schemas" / "compose-spec.json"))
COMPOSE_FILES = ["docker-compose.yml", "docker-compose.cpu.yml"]
_VAR = re.compile(r"\$\{([A-Z0-9_]+)(?::?-([^}]*))?\}")


def _interpolate(value: Any) -> Any:
    """Resolve ``${VAR:-default}`` to its default, as compose does with an empty environment."""
    if isinstance(value, str):
        return _VAR.sub(lambda m: m.group(2) or "", value)
    if isinstance(value, list):
        return [_interpolate(v) for v in value]
    if isinstance(value, dict):
        return {k: _interpolate(v) for k, v in value.items()}
    return value


def load(name: str) -> dict[str, Any]:
    data = yaml.safe_load((ROOT / name).read_text())
    assert isinstance(data, dict)
    return data


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_compose_file_matches_the_spec(name: str) -> None:
    if not SCHEMA.exists():
        pytest.skip(f"Compose spec schema not found at {SCHEMA} (shared/ is not beside the project)")
    schema = json.loads(SCHEMA.read_text())
    # The spec declares draft-07 by an id jsonschema does not resolve; validate with draft 7 explicitly.
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(load(name)), key=lambda e: list(e.path))
    assert not errors, "; ".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors[:5])


def test_images_are_pinned() -> None:
    services = _interpolate(load("docker-compose.yml"))["services"]
    for name, svc in services.items():
        image = svc.get("image")
        assert image, f"service {name} has no image (built services need a pinned tag too)"
        repo, _, tag = image.rpartition(":")
        assert repo and tag and tag != "latest", f"service {name}: image {image!r} is not pinned to a tag"


def test_full_stack_shape() -> None:
    compose = load("docker-compose.yml")
    services = compose["services"]
    redis_cmd = " ".join(services["redis"]["command"])
    for flag in ("--appendonly yes", "--appendfsync everysec", "--maxmemory-policy noeviction"):
        assert flag in redis_cmd
    assert services["redis"]["healthcheck"] and services["redis"]["volumes"]
    sglang = services["sglang"]
    cmd = _interpolate(sglang["command"])
    assert "dvdk98/sraq-gpt-oss-20b" in cmd and "--reasoning-parser" in cmd and "--enable-metrics" in cmd
    assert sglang["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert sglang["healthcheck"]["start_period"]
    for svc in ("orchestrator", "workers"):
        assert services[svc]["build"] == "."
        assert services[svc]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "replicas" in services["workers"]["deploy"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "slim" in dockerfile and re.search(r"^USER (?!root)\w+", dockerfile, re.M)


def test_cpu_variant_disables_sglang() -> None:
    cpu = load("docker-compose.cpu.yml")["services"]
    assert cpu["sglang"]["profiles"] == ["gpu"]
    assert cpu["orchestrator"]["environment"]["SRAQ_INTENT_TIERS"] == "embedded"
    assert cpu["orchestrator"]["depends_on"]["sglang"]["required"] is False


def test_every_service_the_readme_names_exists() -> None:
    readme = (ROOT / "README.md").read_text()
    services = set(load("docker-compose.yml")["services"])
    mentioned = set(re.findall(r"`([a-z][a-z-]*)` service", readme)) | {
        m for m in re.findall(r"--scale ([a-z-]+)=", readme)
    }
    assert mentioned, "the README should name the compose services it documents"
    assert mentioned <= services, f"README names services that do not exist: {mentioned - services}"
