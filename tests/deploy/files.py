"""Reading the launch files under docker/ and running their commands, for the deploy tests.

The commands run for real on this machine, unchanged but for the container paths, which
:func:`localize` maps to local directories, the port and, for a worker, an added ``--connect``
(the credential names the container's address, ``tcp://dispatcher:5555``). The dispatchers bind
``0.0.0.0`` as the files do, so CurveZMQ is on and the credentials' public key is what lets the
peers in."""

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
DOCKER_README = DOCKER / "README.md"
COMPOSE = DOCKER / "compose.yaml"
K8S = DOCKER / "k8s"
SBATCH = DOCKER / "slurm" / "retia.sbatch"
STATE = "/state"  # the dispatcher's home in both images' deployments: key, certificate, journal
PORT = 5555
TRIAL_USER = "nobody"
# what names the cluster key: a worker's command line, mounts and environment hold none of it
CLUSTER_KEY_MARKERS = ("--key-file", "cluster.key", "RETIA_KEY", "retia_key")

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


def secret_mount(pod_spec: dict[str, Any], container: dict[str, Any], path: str) -> dict[str, Any]:
    """The Secret volume that provides the file ``path`` in this container."""
    volumes = {v["name"]: v for v in pod_spec["volumes"]}
    for mount in container["volumeMounts"]:
        volume = volumes[mount["name"]]
        if "secret" in volume and path.startswith(mount["mountPath"].rstrip("/") + "/"):
            relative = path[len(mount["mountPath"].rstrip("/")) + 1 :]
            items = volume["secret"].get("items")
            assert items is None or relative in {i["path"] for i in items}, (
                f"{path} is not among the secret's items"
            )
            secret: dict[str, Any] = volume["secret"]
            return secret
    pytest.fail(f"{path} is not inside a mounted Secret volume")


SLURM_SAMPLES = {
    "RETIA_PORT": "5555",
    "RETIA_STATE": "/home/alice/.retia/slurm-4242",
    "RETIA_KEY_FILE": "/home/alice/.retia/cluster.key",
    "READY_FILE": "/home/alice/.retia/slurm-4242/dispatcher.ready",
    "RETIA_WORKER_CREDENTIAL": "/home/alice/.retia/slurm-4242/worker.cred",
    "CLIENT_CREDENTIAL": "/home/alice/.retia/slurm-4242/client.cred",
    "CLIENT_NAME": "alice",
    "RETIA_ADDRESS": "tcp://gpu001:5555",
    "RETIA_WORKER_HOME": "/tmp/retia-4242",
    "SLURM_CPUS_PER_TASK": "8",
    "GPUS_PER_TRIAL": "2",
    "TRIALS_PER_GPU": "1",
    "THREADS": "8",
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
        match = re.search(r"(?:^|\s)(retia\s+(?:dispatcher|credential|worker|status|report)\b.*)$", line)
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


def assert_no_cluster_key(what: str, *texts: object) -> None:
    """None of ``texts`` (a worker's argv, mounts, environment, as text) refers to the cluster key."""
    for text in texts:
        for marker in CLUSTER_KEY_MARKERS:
            assert marker not in str(text), f"{what} refers to the cluster key ({marker!r}): {text}"


def localize(argv: list[str], paths: dict[str, Path]) -> list[str]:
    """argv with each container path under a key of ``paths`` moved to the local directory."""
    out = []
    for arg in argv:
        for inside, here in paths.items():
            if arg == inside or arg.startswith(inside.rstrip("/") + "/"):
                arg = str(here) + arg[len(inside.rstrip("/")) :]
                break
        out.append(arg)
    return out


def with_port(argv: list[str], port: int) -> list[str]:
    """``--bind tcp://HOST:5555`` -> ``tcp://HOST:port`` (the host, 0.0.0.0, is kept: encryption on)."""
    bind = option(argv, "--bind")
    assert bind.endswith(f":{PORT}"), bind
    return replace_option(argv, "--bind", f"{bind.rsplit(':', 1)[0]}:{port}")


def runnable_here(argv: list[str]) -> list[str]:
    """argv as it can run on this machine: ``--trial-user`` needs root, so it is dropped when the
    tests do not run as root (and kept, and checked, when they do)."""
    if "--trial-user" in argv and os.geteuid() != 0:
        at = argv.index("--trial-user")
        return argv[:at] + argv[at + 2 :]
    return list(argv)


def readme_block_lines(heading: str) -> list[str]:
    """The lines of the ```sh blocks in docker/README.md's section ``heading``."""
    text = DOCKER_README.read_text()
    start = text.index(f"## {heading}")
    end = text.find("\n## ", start + 1)
    section = text[start : end if end >= 0 else None]
    blocks = re.findall(r"^```sh\n(.*?)^```", section, re.M | re.S)
    assert blocks, f"docker/README.md's {heading} section has no sh block"
    return [line for block in blocks for line in block.replace("\\\n", " ").splitlines()]


def shell_words(command: str, variables: dict[str, str]) -> list[str]:
    """A shell command line's words up to its first operator (| > ; &), $(...) and $VAR replaced."""
    for name, value in variables.items():
        command = command.replace(f"$({name})", value).replace(f"${name}", value)
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    words = []
    for token in lexer:
        if set(token) <= set("();<>|&"):
            break
        words.append(token)
    return words


def retia_after(words: list[str], marker: list[str]) -> list[str]:
    """The words after ``marker`` (e.g. ``["exec", "dispatcher"]``), which must start with retia."""
    for at in range(len(words) - len(marker) + 1):
        if words[at : at + len(marker)] == marker:
            rest = words[at + len(marker) :]
            return rest[1:] if rest[:1] == ["--"] else rest
    pytest.fail(f"{marker} not in {words}")


def run_retia(argv: list[str], timeout: float = 60, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """``retia ...`` (argv[0] is "retia") run to its end, output captured."""
    assert argv[0] == "retia", argv
    if "stdout" not in kwargs:
        kwargs.setdefault("capture_output", True)
    return subprocess.run(retia_exe() + argv[1:], text=True, timeout=timeout, env=child_env(), **kwargs)


def start_retia(argv: list[str], processes: list[subprocess.Popen[Any]]) -> subprocess.Popen[str]:
    """``retia ...`` started in the background (stderr kept for the failure message)."""
    assert argv[0] == "retia", argv
    proc = subprocess.Popen(
        retia_exe() + argv[1:], env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    processes.append(proc)
    return proc


def status_json(argv: list[str]) -> dict[str, Any]:
    """Run a ``retia status ... --json`` command; its answer."""
    out = run_retia(argv, timeout=30)
    assert out.returncode == 0, out.stderr
    answer: dict[str, Any] = json.loads(out.stdout)
    return answer


def wait_for_worker(status: list[str], worker: subprocess.Popen[str], name: str) -> dict[str, Any]:
    """Poll the ``retia status --json`` command until worker ``name`` shows up; its row."""
    deadline = time.monotonic() + 90
    while True:
        assert worker.poll() is None, (
            f"worker exited {worker.returncode}: {worker.stderr.read() if worker.stderr else ''}"
        )
        rows: dict[str, dict[str, Any]] = {w["worker_id"]: w for w in status_json(status)["workers"]}
        if name in rows:
            return rows[name]
        assert time.monotonic() < deadline, f"worker {name} never showed up in retia status"
        time.sleep(0.3)


_TRIAL = r"""
import json, os, sys
import retia
from retia import FunctionalEvaluator, report_final_result

def probe(model, credential):
    secrets = [k for k in ("RETIA_KEY", "RETIA_CREDENTIAL") if k in os.environ]
    reads = int(os.access(credential, os.R_OK))
    report_final_result({"default": 1.0, "uid": os.getuid(), "secrets": len(secrets), "reads": reads})

class Model:
    pass

address, credential, worker_credential = sys.argv[1:]
with retia.connect(address, credential=credential) as backend:
    trial = backend.submit(Model, FunctionalEvaluator(probe, credential=worker_credential))
    print(json.dumps(trial.result(timeout=90)))
"""


def run_trial(address: str, credential: Path, worker_credential: Path) -> dict[str, float]:
    """One trial submitted as ``credential`` (a client's): what it saw on the worker (its uid, how
    many credential variables, whether it can read the worker's credential file)."""
    out = subprocess.run(
        [sys.executable, "-c", _TRIAL, address, str(credential), str(worker_credential)],
        capture_output=True,
        text=True,
        timeout=150,
        env=child_env(),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    seen: dict[str, float] = json.loads(out.stdout.splitlines()[-1])
    return seen


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
