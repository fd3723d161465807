"""Reading the launch files under docker/ and running their commands, for the deploy tests."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from retia.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
K8S = DOCKER / "k8s"
SBATCH = DOCKER / "slurm" / "retia.sbatch"
KEY_TARGET = "/run/secrets/retia_key"
PORT = 5555

SUBCOMMAND_OF_IMAGE = {"dispatcher.Dockerfile": "dispatcher", "worker.Dockerfile": "worker"}


# ---------------------------------------------------------------- helpers


def load_all(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def parse(argv: list[str], where: str) -> Any:
    """retia's real parser on argv; argparse's SystemExit (bad flag, missing value) fails the test."""
    assert argv and argv[0] == "retia", f"{where}: not a retia command: {argv}"
    try:
        return build_parser().parse_args(argv[1:])
    except SystemExit as exc:
        pytest.fail(f"{where}: retia rejects {shlex.join(argv)} (exit {exc.code})")


def entrypoint(dockerfile: Path) -> list[str]:
    """The exec-form ENTRYPOINT, from `retia` on (a leading init such as tini is dropped)."""
    lines = [line for line in dockerfile.read_text().splitlines() if line.startswith("ENTRYPOINT")]
    assert len(lines) == 1, f"{dockerfile.name}: expected one ENTRYPOINT"
    entry: list[str] = json.loads(lines[0].split(None, 1)[1])
    assert "retia" in entry, f"{dockerfile.name}: ENTRYPOINT does not run retia: {entry}"
    return entry[entry.index("retia") :]


def cmd(dockerfile: Path) -> list[str]:
    lines = [line for line in dockerfile.read_text().splitlines() if line.startswith("CMD")]
    assert len(lines) == 1, f"{dockerfile.name}: expected one CMD"
    command: list[str] = json.loads(lines[0].split(None, 1)[1])
    return command


def load_compose() -> dict[str, Any]:
    docs = load_all(COMPOSE)
    assert len(docs) == 1
    compose: dict[str, Any] = docs[0]
    return compose


def compose_images() -> dict[str, Path]:
    """Image name (no tag) -> the Dockerfile that builds it, from compose.yaml's build sections."""
    images: dict[str, Path] = {}
    for name, service in load_compose()["services"].items():
        build = service["build"]
        context = (COMPOSE.parent / build["context"]).resolve()
        dockerfile = context / build["dockerfile"]
        assert (context / "pyproject.toml").is_file(), (
            f"{name}: build context {context} is not the repository root"
        )
        assert dockerfile.is_file(), f"{name}: {dockerfile} does not exist"
        image = service["image"].rsplit(":", 1)[0]
        assert images.setdefault(image, dockerfile) == dockerfile, f"image {image} built from two Dockerfiles"
    return images


def compose_argv(service: dict[str, Any]) -> list[str]:
    dockerfile = (COMPOSE.parent / service["build"]["context"] / service["build"]["dockerfile"]).resolve()
    return entrypoint(dockerfile) + list(service["command"])


def option(argv: list[str], flag: str) -> str:
    assert flag in argv, f"{flag} missing from {argv}"
    return argv[argv.index(flag) + 1]


def replace_option(argv: list[str], flag: str, value: str) -> list[str]:
    out = list(argv)
    out[out.index(flag) + 1] = value
    return out


def k8s_docs() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs += load_all(path)
    return docs


def k8s(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in k8s_docs() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name} in docker/k8s"
    return found[0]


def k8s_argv(container: dict[str, Any], pod_spec: dict[str, Any]) -> list[str]:
    """The container's effective argv: command (else the image's ENTRYPOINT) + args, $(VAR) expanded."""
    images = compose_images()
    image = container["image"].rsplit(":", 1)[0].rsplit("/", 1)[-1]
    assert image in images, f"k8s image {container['image']} is not built by compose.yaml ({sorted(images)})"
    argv = list(container["command"]) if "command" in container else entrypoint(images[image])
    argv += container.get("args", [])
    env = {e["name"] for e in container.get("env", [])}

    def expand(match: re.Match[str]) -> str:
        assert match.group(1) in env, f"$({match.group(1)}) used but not defined in the container's env"
        return f"sample-{match.group(1).lower()}"

    return [re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", expand, arg) for arg in argv]


def secret_mount(pod_spec: dict[str, Any], container: dict[str, Any], key_file: str) -> dict[str, Any]:
    """The Secret volume that provides key_file in this container."""
    volumes = {v["name"]: v for v in pod_spec["volumes"]}
    for mount in container["volumeMounts"]:
        volume = volumes[mount["name"]]
        if "secret" in volume and key_file.startswith(mount["mountPath"].rstrip("/") + "/"):
            relative = key_file[len(mount["mountPath"].rstrip("/")) + 1 :]
            items = volume["secret"].get("items")
            assert items is None or relative in {i["path"] for i in items}, (
                f"{key_file} is not among the secret's items"
            )
            secret: dict[str, Any] = volume["secret"]
            return secret
    pytest.fail(f"--key-file {key_file} is not inside a mounted Secret volume")


SLURM_SAMPLES = {
    "RETIA_PORT": "5555",
    "RETIA_STATE": "/home/alice/.retia/slurm-4242",
    "RETIA_KEY_FILE": "/home/alice/.retia/cluster.key",
    "READY_FILE": "/home/alice/.retia/slurm-4242/dispatcher.ready",
    "RETIA_ADDRESS": "tcp://gpu001:5555",
    "RETIA_WORKER_HOME": "/tmp/retia-4242",
    "SLURMD_NODENAME": "gpu002",
    "SLURM_LOCALID": "3",
    "SLURM_CPUS_PER_TASK": "8",
    "gpu": "3",
}


def shell_substitute(text: str) -> str:
    """Replace ${VAR:-default}, ${VAR} and $VAR with sample values (unknown variables fail)."""

    def value(name: str, default: str | None) -> str:
        if name in SLURM_SAMPLES:
            return SLURM_SAMPLES[name]
        assert default is not None, f"no sample value for ${name}"
        return default

    text = re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: value(m.group(1), m.group(2)), text)
    text = re.sub(r"\$\{(\w+)\}", lambda m: value(m.group(1), None), text)
    return re.sub(r"\$(\w+)", lambda m: value(m.group(1), None), text)


def sbatch_retia_commands() -> list[list[str]]:
    """Every `retia <subcommand> ...` in the sbatch script, variables replaced, shell tail dropped."""
    logical = SBATCH.read_text().replace("\\\n", " ").splitlines()
    commands = []
    for line in logical:
        if line.lstrip().startswith("#"):
            continue
        match = re.search(r"(?:^|\s)(retia\s+(?:dispatcher|worker|status|report)\b.*)$", line)
        if not match:
            continue
        lexer = shlex.shlex(shell_substitute(match.group(1)), posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        argv = []
        for token in lexer:
            if set(token) <= set("();<>|&"):
                break  # `&`, `||`, `;` ...: the retia command ends here
            argv.append(token)
        commands.append(argv)
    return commands


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def retia_exe() -> list[str]:
    script = Path(sys.executable).with_name("retia")
    return [str(script)] if script.exists() else [sys.executable, "-m", "retia.cli"]


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("RETIA_KEY", None)
    return env


def write_key(path: Path, mode: int) -> Path:
    path.write_text("ab" * 32 + "\n")
    path.chmod(mode)
    return path


def wait_for(path: Path, proc: subprocess.Popen[Any], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.read_text()):
        assert proc.poll() is None, f"process exited with {proc.returncode} before writing {path}"
        assert time.monotonic() < deadline, f"{path} not written within {timeout}s"
        time.sleep(0.05)


def stop(proc: subprocess.Popen[Any], timeout: float = 20) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            pytest.fail(f"{proc.args!s} ignored SIGTERM for {timeout}s")
    return int(proc.returncode)
