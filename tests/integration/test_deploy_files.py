"""The launch files under docker/ (Compose, Kubernetes, Slurm, Dockerfiles) against the real retia.

These machines run no container engine, so the images are never built here. Instead: every
YAML file parses; Compose and Kubernetes reference Dockerfiles and images that exist; every
`retia ...` command line in the files is accepted by retia's real argument parser; the
dispatcher command from compose.yaml runs for real (with a worker started by the worker
command from compose.yaml), answers `retia status` and exits 0 on SIGTERM; and the dispatcher
side imports no torch, with the dispatcher image installing exactly its third-party imports.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from retia.cli import build_parser
from retia.errors import ConfigError
from retia.keys import load_key

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
K8S = DOCKER / "k8s"
SBATCH = DOCKER / "slurm" / "retia.sbatch"
KEY_TARGET = "/run/secrets/retia_key"
PORT = 5555

SUBCOMMAND_OF_IMAGE = {"dispatcher.Dockerfile": "dispatcher", "worker.Dockerfile": "worker"}


# ---------------------------------------------------------------- helpers


def _load_all(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _parse(argv: list[str], where: str) -> Any:
    """retia's real parser on argv; argparse's SystemExit (bad flag, missing value) fails the test."""
    assert argv and argv[0] == "retia", f"{where}: not a retia command: {argv}"
    try:
        return build_parser().parse_args(argv[1:])
    except SystemExit as exc:
        pytest.fail(f"{where}: retia rejects {shlex.join(argv)} (exit {exc.code})")


def _entrypoint(dockerfile: Path) -> list[str]:
    """The exec-form ENTRYPOINT, from `retia` on (a leading init such as tini is dropped)."""
    lines = [line for line in dockerfile.read_text().splitlines() if line.startswith("ENTRYPOINT")]
    assert len(lines) == 1, f"{dockerfile.name}: expected one ENTRYPOINT"
    entry = json.loads(lines[0].split(None, 1)[1])
    assert "retia" in entry, f"{dockerfile.name}: ENTRYPOINT does not run retia: {entry}"
    return entry[entry.index("retia") :]


def _cmd(dockerfile: Path) -> list[str]:
    lines = [line for line in dockerfile.read_text().splitlines() if line.startswith("CMD")]
    assert len(lines) == 1, f"{dockerfile.name}: expected one CMD"
    return json.loads(lines[0].split(None, 1)[1])


def _compose() -> dict[str, Any]:
    docs = _load_all(COMPOSE)
    assert len(docs) == 1
    return docs[0]


def _compose_images() -> dict[str, Path]:
    """Image name (no tag) -> the Dockerfile that builds it, from compose.yaml's build sections."""
    images: dict[str, Path] = {}
    for name, service in _compose()["services"].items():
        build = service["build"]
        context = (COMPOSE.parent / build["context"]).resolve()
        dockerfile = context / build["dockerfile"]
        assert (context / "pyproject.toml").is_file(), f"{name}: build context {context} is not the repository root"
        assert dockerfile.is_file(), f"{name}: {dockerfile} does not exist"
        image = service["image"].rsplit(":", 1)[0]
        assert images.setdefault(image, dockerfile) == dockerfile, f"image {image} built from two Dockerfiles"
    return images


def _compose_argv(service: dict[str, Any]) -> list[str]:
    dockerfile = (COMPOSE.parent / service["build"]["context"] / service["build"]["dockerfile"]).resolve()
    return _entrypoint(dockerfile) + list(service["command"])


def _option(argv: list[str], flag: str) -> str:
    assert flag in argv, f"{flag} missing from {argv}"
    return argv[argv.index(flag) + 1]


def _replace_option(argv: list[str], flag: str, value: str) -> list[str]:
    out = list(argv)
    out[out.index(flag) + 1] = value
    return out


def _k8s_docs() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs += _load_all(path)
    return docs


def _k8s(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in _k8s_docs() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name} in docker/k8s"
    return found[0]


def _k8s_argv(container: dict[str, Any], pod_spec: dict[str, Any]) -> list[str]:
    """The container's effective argv: command (else the image's ENTRYPOINT) + args, $(VAR) expanded."""
    images = _compose_images()
    image = container["image"].rsplit(":", 1)[0].rsplit("/", 1)[-1]
    assert image in images, f"k8s image {container['image']} is not built by compose.yaml ({sorted(images)})"
    argv = list(container["command"]) if "command" in container else _entrypoint(images[image])
    argv += container.get("args", [])
    env = {e["name"] for e in container.get("env", [])}

    def expand(match: re.Match[str]) -> str:
        assert match.group(1) in env, f"$({match.group(1)}) used but not defined in the container's env"
        return f"sample-{match.group(1).lower()}"

    return [re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", expand, arg) for arg in argv]


def _secret_mount(pod_spec: dict[str, Any], container: dict[str, Any], key_file: str) -> dict[str, Any]:
    """The Secret volume that provides key_file in this container."""
    volumes = {v["name"]: v for v in pod_spec["volumes"]}
    for mount in container["volumeMounts"]:
        volume = volumes[mount["name"]]
        if "secret" in volume and key_file.startswith(mount["mountPath"].rstrip("/") + "/"):
            relative = key_file[len(mount["mountPath"].rstrip("/")) + 1 :]
            items = volume["secret"].get("items")
            assert items is None or relative in {i["path"] for i in items}, f"{key_file} is not among the secret's items"
            return volume["secret"]
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


def _shell_substitute(text: str) -> str:
    """Replace ${VAR:-default}, ${VAR} and $VAR with sample values (unknown variables fail)."""

    def value(name: str, default: str | None) -> str:
        if name in SLURM_SAMPLES:
            return SLURM_SAMPLES[name]
        assert default is not None, f"no sample value for ${name}"
        return default

    text = re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: value(m.group(1), m.group(2)), text)
    text = re.sub(r"\$\{(\w+)\}", lambda m: value(m.group(1), None), text)
    return re.sub(r"\$(\w+)", lambda m: value(m.group(1), None), text)


def _sbatch_retia_commands() -> list[list[str]]:
    """Every `retia <subcommand> ...` in the sbatch script, variables replaced, shell tail dropped."""
    logical = SBATCH.read_text().replace("\\\n", " ").splitlines()
    commands = []
    for line in logical:
        if line.lstrip().startswith("#"):
            continue
        match = re.search(r"(?:^|\s)(retia\s+(?:dispatcher|worker|status|report)\b.*)$", line)
        if not match:
            continue
        lexer = shlex.shlex(_shell_substitute(match.group(1)), posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        argv = []
        for token in lexer:
            if set(token) <= set("();<>|&"):
                break  # `&`, `||`, `;` ...: the retia command ends here
            argv.append(token)
        commands.append(argv)
    return commands


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _retia_exe() -> list[str]:
    script = Path(sys.executable).with_name("retia")
    return [str(script)] if script.exists() else [sys.executable, "-m", "retia.cli"]


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("RETIA_KEY", None)
    return env


def _write_key(path: Path, mode: int) -> Path:
    path.write_text("ab" * 32 + "\n")
    path.chmod(mode)
    return path


def _wait_for(path: Path, proc: subprocess.Popen[Any], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.read_text()):
        assert proc.poll() is None, f"process exited with {proc.returncode} before writing {path}"
        assert time.monotonic() < deadline, f"{path} not written within {timeout}s"
        time.sleep(0.05)


def _stop(proc: subprocess.Popen[Any], timeout: float = 20) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            pytest.fail(f"{proc.args} ignored SIGTERM for {timeout}s")
    return int(proc.returncode)


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[Any]]]:
    """Started processes, killed at the end of the test whatever happened."""
    started: list[subprocess.Popen[Any]] = []
    yield started
    for proc in reversed(started):
        if proc.poll() is None:
            proc.kill()
        proc.wait()


# ---------------------------------------------------------------- every YAML parses


@pytest.mark.timeout(60)
def test_every_yaml_file_parses() -> None:
    files = sorted([*DOCKER.rglob("*.yaml"), *DOCKER.rglob("*.yml")])
    names = {str(p.relative_to(DOCKER)) for p in files}
    assert {"compose.yaml", "k8s/dispatcher.yaml", "k8s/workers.yaml", "k8s/secret.yaml"} <= names
    for path in files:
        docs = _load_all(path)
        assert docs, f"{path} holds no YAML document"
        for doc in docs:
            assert isinstance(doc, dict), f"{path}: a document is not a mapping"
            if path.parent == K8S and path.name != "kustomization.yaml":
                assert {"apiVersion", "kind", "metadata"} <= set(doc), f"{path}: not a Kubernetes object"


# ---------------------------------------------------------------- Dockerfiles


@pytest.mark.timeout(60)
@pytest.mark.parametrize("dockerfile", sorted(SUBCOMMAND_OF_IMAGE))
def test_dockerfile_entrypoint_and_cmd_are_retia_commands(dockerfile: str) -> None:
    path = DOCKER / dockerfile
    text = path.read_text()
    entry = _entrypoint(path)
    assert entry == ["retia", SUBCOMMAND_OF_IMAGE[dockerfile]]
    if _cmd(path) != ["--help"]:
        _parse(entry + _cmd(path), f"{dockerfile} CMD")
    # what it copies exists, and includes what pyproject.toml needs to build
    for line in text.splitlines():
        if line.startswith("COPY"):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), f"{dockerfile}: COPY {source}: no such path in the repository"
    for needed in ("pyproject.toml", "README.md", "common", "dispatcher", "worker"):
        assert re.search(rf"^COPY .*\b{needed}\b", text, re.M), f"{dockerfile} does not copy {needed}"
    ignore = DOCKER / f"{dockerfile}.dockerignore"
    assert ignore.is_file() and "!pyproject.toml" in ignore.read_text()


@pytest.mark.timeout(60)
def test_worker_image_installs_gpu_torch_before_the_project() -> None:
    text = (DOCKER / "worker.Dockerfile").read_text()
    assert re.search(r"^ARG TORCH_INDEX_URL=https://download\.pytorch\.org/whl/cu\d+$", text, re.M)
    assert re.search(r"^FROM \$\{CUDA_IMAGE\}$", text, re.M) and "ARG CUDA_IMAGE=nvidia/cuda:" in text
    torch_at = re.search(r'^RUN pip install --index-url "\$\{TORCH_INDEX_URL\}" "\$\{TORCH_SPEC\}"$', text, re.M)
    project_at = re.search(r"^RUN pip install /src\b", text, re.M)
    assert torch_at and project_at and torch_at.start() < project_at.start()


@pytest.mark.timeout(60)
def test_dispatcher_image_installs_exactly_the_dispatcher_imports(tmp_path: Path) -> None:
    """The slim image's explicit pip list == the distributions the dispatcher side imports (+ their deps)."""
    text = (DOCKER / "dispatcher.Dockerfile").read_text()
    assert "pip install --no-deps /src" in text
    installs = [m for m in re.findall(r"pip install ([^\n&\\]+)", text) if "/src" not in m and "--upgrade" not in m]
    assert not any("torch" in m or "lightning" in m for m in installs), installs
    assert len(installs) == 1, installs
    listed = {_norm(re.split(r"[<>=!~ ]", req.strip("\"'"))[0]) for req in shlex.split(installs[0])}

    script = textwrap.dedent(
        """
        import importlib.metadata, json, sys
        at_startup = set(sys.modules)  # site hooks (e.g. setuptools' _distutils_hack), not retia's doing
        import retia.cli, retia.dispatcher.service, retia.dispatcher.cli, retia.dispatcher.client
        import rich.console, rich.table          # run_status's table (imported lazily)
        retia.cli.build_parser()
        tops = {m.split(".")[0] for m in set(sys.modules) - at_startup} - set(sys.stdlib_module_names) - {"retia"}
        dists = importlib.metadata.packages_distributions()
        print(json.dumps(sorted({d for t in tops for d in dists.get(t, [])})))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=_child_env())
    assert out.returncode == 0, out.stderr
    imported = {_norm(d) for d in json.loads(out.stdout)}
    assert listed <= imported, f"the dispatcher image installs {sorted(listed - imported)}, which it never imports"
    assert imported <= _closure(listed), f"the dispatcher imports {sorted(imported - _closure(listed))}, not installed"


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _closure(names: set[str]) -> set[str]:
    """names and everything they require on this platform (markers evaluated, no extras)."""
    from packaging.requirements import Requirement

    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for line in importlib.metadata.requires(name) or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(_norm(req.name))
    return seen


# ---------------------------------------------------------------- the dispatcher side is torch-free


@pytest.mark.timeout(120)
def test_dispatcher_side_imports_no_torch(tmp_path: Path, processes: list[subprocess.Popen[Any]]) -> None:
    check = (
        "import sys, retia.dispatcher.service, retia.dispatcher.cli, retia.cli\n"
        "retia.cli.build_parser()\n"
        "heavy = sorted(m for m in ('torch', 'pytorch_lightning') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=60, env=_child_env())
    assert out.returncode == 0, out.stderr

    # And a running dispatcher answering `retia status` with torch made unimportable.
    blocked = (
        "import sys\n"
        "for name in ('torch', 'pytorch_lightning', 'lightning', 'numpy', 'sklearn'):\n"
        "    sys.modules[name] = None  # any import of these now raises ImportError\n"
        "from retia.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    key = _write_key(tmp_path / "cluster.key", 0o600)
    ready = tmp_path / "ready"
    address = f"tcp://127.0.0.1:{_free_port()}"
    dispatcher = subprocess.Popen(
        [sys.executable, "-c", blocked, "dispatcher", "--bind", address, "--home", str(tmp_path / "home"),
         "--key-file", str(key), "--ready-file", str(ready)],
        env=_child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    processes.append(dispatcher)
    _wait_for(ready, dispatcher, 30)
    for extra in ([], ["--json"]):
        status = subprocess.run(
            [sys.executable, "-c", blocked, "status", address, "--key-file", str(key), *extra],
            capture_output=True, text=True, timeout=30, env=_child_env(),
        )  # fmt: skip
        assert status.returncode == 0, status.stderr
    assert _stop(dispatcher) == 0, dispatcher.stderr.read() if dispatcher.stderr else ""


# ---------------------------------------------------------------- compose.yaml


@pytest.mark.timeout(60)
def test_compose_services_reference_dockerfiles_and_valid_commands() -> None:
    compose = _compose()
    services = compose["services"]
    images = _compose_images()
    assert {p.name for p in images.values()} == set(SUBCOMMAND_OF_IMAGE)
    workers = {name: s for name, s in services.items() if name.startswith("worker-")}
    assert "dispatcher" in services and len(workers) >= 2

    dispatcher = services["dispatcher"]
    args = _parse(_compose_argv(dispatcher), "compose dispatcher")
    assert args.command == "dispatcher"
    assert args.bind == f"tcp://0.0.0.0:{PORT}"
    assert str(args.key_file) == KEY_TARGET and str(args.home) == "/state"
    assert f"{PORT}:{PORT}" in [str(p) for p in dispatcher["ports"]]
    assert any(str(v).split(":")[1] == "/state" for v in dispatcher["volumes"])
    health = dispatcher["healthcheck"]["test"]
    assert health[0] == "CMD"
    health_args = _parse(health[1:], "compose dispatcher healthcheck")
    assert health_args.command == "status" and str(health_args.key_file) == KEY_TARGET

    gpus = []
    for name, service in workers.items():
        assert Path(service["build"]["dockerfile"]).name == "worker.Dockerfile", name
        args = _parse(_compose_argv(service), f"compose {name}")
        assert args.command == "worker"
        assert args.connect == f"tcp://dispatcher:{PORT}", name
        assert args.gpu == "0", f"{name}: a container sees its reserved GPU as device 0"
        assert str(args.key_file) == KEY_TARGET
        assert service["depends_on"]["dispatcher"]["condition"] == "service_healthy"
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
        assert len(device["device_ids"]) == 1
        gpus.append(device["device_ids"][0])
    assert len(set(gpus)) == len(gpus), f"two workers reserve the same GPU: {gpus}"
    assert sorted(gpus) == [str(i) for i in range(len(gpus))]
    assert len({_option(_compose_argv(s), "--name") for s in workers.values()}) == len(workers)

    # the key: one compose secret, long syntax, mounted where --key-file points, mode 0400
    assert set(compose["secrets"]) == {"retia_key"} and "file" in compose["secrets"]["retia_key"]
    for name, service in services.items():
        (secret,) = service["secrets"]
        assert secret["source"] == "retia_key" and f"/run/secrets/{secret['target']}" == KEY_TARGET, name
        assert secret["mode"] == 0o400, name
        assert not stat.S_IMODE(secret["mode"]) & (stat.S_IRWXG | stat.S_IRWXO)


@pytest.mark.timeout(180)
def test_compose_dispatcher_and_worker_commands_run_for_real(
    tmp_path: Path, processes: list[subprocess.Popen[Any]]
) -> None:
    """compose.yaml's exact commands, with only bind/home/key paths made local."""
    services = _compose()["services"]
    key = _write_key(tmp_path / "retia_key", 0o400)  # what the 0400 secret mount gives the container
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    ready = tmp_path / "dispatcher.ready"

    argv = _compose_argv(services["dispatcher"])
    argv = _replace_option(argv, "--bind", f"tcp://127.0.0.1:{port}")
    argv = _replace_option(argv, "--home", str(tmp_path / "state"))
    argv = _replace_option(argv, "--key-file", str(key))
    argv += ["--ready-file", str(ready)]
    _parse(argv, "local dispatcher")
    dispatcher = subprocess.Popen(
        _retia_exe() + argv[1:], env=_child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    processes.append(dispatcher)
    _wait_for(ready, dispatcher, 30)
    assert ready.read_text() == address
    assert stat.S_IMODE(key.stat().st_mode) == 0o400  # accepted as is, not rewritten
    assert (tmp_path / "state" / "journal.sqlite").exists()

    # the healthcheck command, pointed at the local key
    health = _replace_option(services["dispatcher"]["healthcheck"]["test"][1:], "--key-file", str(key))
    health = [address if a.startswith("tcp://127.0.0.1:") else a for a in health]
    out = subprocess.run(_retia_exe() + health[1:], capture_output=True, text=True, timeout=30, env=_child_env())
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["workers"] == []

    # worker-0's exact command, connected to it (CPU machine: --gpu 0 only sets the trials' CUDA_VISIBLE_DEVICES)
    wargv = _compose_argv(services["worker-0"])
    wargv = _replace_option(wargv, "--connect", address)
    wargv = _replace_option(wargv, "--key-file", str(key))
    wargv = _replace_option(wargv, "--home", str(tmp_path / "worker"))
    worker = subprocess.Popen(
        _retia_exe() + wargv[1:], env=_child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    processes.append(worker)
    deadline = time.monotonic() + 90
    workers: list[dict[str, Any]] = []
    while not workers:
        assert worker.poll() is None, f"worker exited {worker.returncode}: {worker.stderr.read() if worker.stderr else ''}"
        assert time.monotonic() < deadline, "the worker never showed up in retia status"
        out = subprocess.run(
            _retia_exe() + ["status", address, "--key-file", str(key), "--json"],
            capture_output=True, text=True, timeout=30, env=_child_env(),
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        workers = json.loads(out.stdout)["workers"]
        time.sleep(0.3)
    assert workers[0]["worker_id"] == _option(wargv, "--name") and workers[0]["gpu"] == "0"

    # the plain (rich table) status as a person would type it
    out = subprocess.run(
        _retia_exe() + ["status", address, "--key-file", str(key)],
        capture_output=True, text=True, timeout=30, env=_child_env(),
    )  # fmt: skip
    assert out.returncode == 0 and "worker-0" in out.stdout, out.stderr

    assert _stop(worker, timeout=30) == 0, worker.stderr.read() if worker.stderr else ""
    assert _stop(dispatcher) == 0, dispatcher.stderr.read() if dispatcher.stderr else ""


@pytest.mark.timeout(60)
def test_a_group_readable_key_is_refused_so_the_docs_say_chmod_600(tmp_path: Path) -> None:
    """Compose ignores `mode` for file secrets: the host file's mode reaches the container."""
    assert load_key(_write_key(tmp_path / "a", 0o400))
    assert load_key(_write_key(tmp_path / "b", 0o600))
    with pytest.raises(ConfigError, match="chmod 600"):
        load_key(_write_key(tmp_path / "c", 0o444))  # compose's default secret mode
    readme = (DOCKER / "README.md").read_text()
    assert "chmod 600" in readme and "umask 077" in readme
    assert "TCP 5555" in readme or "TCP port: 5555" in readme


# ---------------------------------------------------------------- Kubernetes


@pytest.mark.timeout(60)
def test_k8s_dispatcher_deployment_and_service() -> None:
    deployment = _k8s("Deployment", "retia-dispatcher")
    assert deployment["spec"]["replicas"] == 1
    pod = deployment["spec"]["template"]["spec"]
    assert "fsGroup" not in pod.get("securityContext", {}), "fsGroup makes the key group-readable"
    (container,) = pod["containers"]
    args = _parse(_k8s_argv(container, pod), "k8s dispatcher")
    assert args.command == "dispatcher" and args.bind == f"tcp://0.0.0.0:{PORT}"
    assert container["ports"][0]["containerPort"] == PORT
    secret = _secret_mount(pod, container, str(args.key_file))
    assert secret["defaultMode"] == 0o400 and secret["secretName"] == "retia-cluster-key"
    # state: a mounted volume (PVC or emptyDir) at --home
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volume = {v["name"]: v for v in pod["volumes"]}[mounts[str(args.home)]]
    if "persistentVolumeClaim" in volume:
        _k8s("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
    else:
        assert "emptyDir" in volume
    probe = container["readinessProbe"]["exec"]["command"]
    assert _parse(probe, "k8s readinessProbe").command == "status"
    assert _option(probe, "--key-file") == str(args.key_file)

    service = _k8s("Service", "retia-dispatcher")
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert [p["port"] for p in service["spec"]["ports"]] == [PORT]


@pytest.mark.timeout(60)
def test_k8s_workers_one_gpu_each() -> None:
    statefulset = _k8s("StatefulSet", "retia-worker")
    _k8s("Service", statefulset["spec"]["serviceName"])
    pod = statefulset["spec"]["template"]["spec"]
    assert "fsGroup" not in pod.get("securityContext", {})
    (container,) = pod["containers"]
    args = _parse(_k8s_argv(container, pod), "k8s worker")
    assert args.command == "worker" and args.gpu == "0"
    assert args.connect == f"tcp://retia-dispatcher:{PORT}"  # the dispatcher Service's DNS name
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    secret = _secret_mount(pod, container, str(args.key_file))
    assert secret["defaultMode"] == 0o400 and secret["secretName"] == "retia-cluster-key"
    assert "/dev/shm" in {m["mountPath"] for m in container["volumeMounts"]}


@pytest.mark.timeout(60)
def test_k8s_secret_template_and_kustomization(tmp_path: Path) -> None:
    secret = _k8s("Secret", "retia-cluster-key")
    (placeholder,) = secret["stringData"].values()
    assert list(secret["stringData"]) == ["cluster.key"]
    # applied unedited, the template must not yield a working (publicly known) key
    (tmp_path / "placeholder").write_text(placeholder)
    (tmp_path / "placeholder").chmod(0o400)
    with pytest.raises(ConfigError, match="at least 16"):
        load_key(tmp_path / "placeholder")

    kustomization = _load_all(K8S / "kustomization.yaml")[0]
    for resource in kustomization["resources"]:
        assert (K8S / resource).is_file(), resource
    (generator,) = kustomization["secretGenerator"]
    assert generator["name"] == "retia-cluster-key"
    assert generator["files"] == ["cluster.key=retia.key"]
    assert {i["name"] for i in kustomization["images"]} == set(_compose_images())


# ---------------------------------------------------------------- Slurm


@pytest.mark.timeout(60)
def test_sbatch_retia_commands_are_accepted() -> None:
    text = SBATCH.read_text()
    if shutil.which("bash"):
        syntax = subprocess.run(["bash", "-n", str(SBATCH)], capture_output=True, text=True, timeout=30)
        assert syntax.returncode == 0, syntax.stderr
    commands = _sbatch_retia_commands()
    parsed = {argv[1]: _parse(argv, f"retia.sbatch: {shlex.join(argv)}") for argv in commands}
    assert set(parsed) == {"dispatcher", "worker", "status"}, commands

    dispatcher, worker, status = parsed["dispatcher"], parsed["worker"], parsed["status"]
    assert dispatcher.bind == "tcp://0.0.0.0:5555" and dispatcher.ready_file is not None
    assert str(dispatcher.key_file) == SLURM_SAMPLES["RETIA_KEY_FILE"] == str(worker.key_file)
    assert worker.connect == SLURM_SAMPLES["RETIA_ADDRESS"] == status.address
    assert worker.gpu == SLURM_SAMPLES["gpu"] and worker.threads == 8

    # launch structure: dispatcher on the first node, then one worker task per GPU
    assert re.search(r"srun [^\n]*--nodelist=\"\$HEAD_NODE\"", text)
    assert re.search(r"srun [^\n]*--ntasks-per-node=\"\$GPUS_PER_NODE\"", text)
    assert "SLURM_LOCALID" in text and "$HOME/.retia/cluster.key" in text
    assert text.index("retia dispatcher") < text.index('[[ -s "$READY_FILE" ]]') < text.index("retia worker")
    assert '"$@" --address "$RETIA_ADDRESS"' in text
    assert os.access(SBATCH, os.X_OK)


@pytest.mark.timeout(60)
def test_sbatch_worker_takes_its_own_gpu_from_slurm(tmp_path: Path) -> None:
    """The bash that picks task $SLURM_LOCALID's GPU out of CUDA_VISIBLE_DEVICES, run for real."""
    if not shutil.which("bash"):
        pytest.skip("no bash")
    text = SBATCH.read_text()
    lines = text[text.index("bash -c '") + len("bash -c '") :].splitlines()
    picker = "\n".join(line for line in lines if line.strip().startswith(("gpus=", "gpu=")))
    assert picker.count("\n") == 1, picker
    cases = [("4,5,6,7", "2", "6"), ("0,1", "1", "1"), ("", "3", "3")]
    for visible, local_id, expected in cases:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "SLURM_LOCALID": local_id}
        if visible:
            env["CUDA_VISIBLE_DEVICES"] = visible
        out = subprocess.run(["bash", "-c", picker + '\necho "$gpu"'], capture_output=True, text=True, env=env, timeout=30)
        assert out.stdout.strip() == expected, (visible, local_id, out.stdout, out.stderr)


_FAKE_SRUN = r"""#!/bin/bash
# Stand-in for srun on one machine: drop the options, run --ntasks-per-node copies of the command
# with SLURM_LOCALID set, forward SIGTERM to them (as srun does) and wait.
tasks=1
while [[ $# -gt 0 && $1 == --* ]]; do
    case $1 in --ntasks-per-node=*) tasks=${1#*=} ;; esac
    shift
done
pids=()
for ((i = 0; i < tasks; i++)); do
    SLURM_LOCALID=$i SLURMD_NODENAME=node0 "$@" &
    pids+=($!)
done
trap 'kill -TERM "${pids[@]}" 2>/dev/null' TERM INT
status=0
for pid in "${pids[@]}"; do
    while true; do
        wait "$pid"; rc=$?
        kill -0 "$pid" 2>/dev/null || break
    done
    [[ $rc -ne 0 ]] && status=$rc
done
exit $status
"""

_EXPERIMENT = r"""
import argparse, json, sys, time
from retia.dispatcher.client import query_status
from retia.keys import resolve_key

parser = argparse.ArgumentParser()
parser.add_argument("--workers", type=int)
parser.add_argument("--address")
args = parser.parse_args()
deadline = time.monotonic() + 90
while time.monotonic() < deadline:
    status = query_status(args.address, key=resolve_key(), timeout=5)
    if len(status.workers) >= args.workers:
        print("EXPERIMENT", json.dumps([[w.worker_id, w.gpu] for w in status.workers]), flush=True)
        sys.exit(0)
    time.sleep(0.3)
sys.exit("no workers")
"""


def _procs_mentioning(needle: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if needle in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


@pytest.mark.timeout(240)
def test_sbatch_script_runs_end_to_end_with_a_fake_srun(tmp_path: Path) -> None:
    """The whole batch script on this machine: a stub srun/scontrol, one 'GPU', a tiny experiment."""
    if not shutil.which("bash"):
        pytest.skip("no bash")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(_FAKE_SRUN)
    (bin_dir / "scontrol").write_text("#!/bin/bash\necho localhost\n")
    for tool in ("srun", "scontrol"):
        (bin_dir / tool).chmod(0o755)
    experiment = tmp_path / "experiment.py"
    experiment.write_text(_EXPERIMENT)
    home = tmp_path / "home"
    home.mkdir()
    env = {
        **_child_env(),
        "PATH": os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        "HOME": str(home),
        "SLURM_JOB_NODELIST": "node0",
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NUM_NODES": "1",
        "SLURM_CPUS_PER_TASK": "1",
        "RETIA_GPUS_PER_NODE": "1",
        "RETIA_PORT": str(_free_port()),
        "RETIA_WORKER_HOME": str(tmp_path / "worker"),
        "RETIA_PYTHON": sys.executable,
    }
    env.pop("CUDA_VISIBLE_DEVICES", None)
    job = subprocess.Popen(
        ["bash", str(SBATCH), str(experiment), "--workers", "1"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        output, _ = job.communicate(timeout=200)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()
    assert job.returncode == 0, output
    assert 'EXPERIMENT [["node0-gpu0", "0"]]' in output, output
    assert "experiment exited with status 0" in output
    key = home / ".retia" / "cluster.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600  # created by the dispatcher on first use
    assert (home / ".retia" / "slurm-4242" / "journal.sqlite").exists()
    deadline = time.monotonic() + 15  # the trap SIGTERMed the dispatcher and worker steps
    while (left := _procs_mentioning(str(tmp_path))) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"processes left running after the job: {left}"
