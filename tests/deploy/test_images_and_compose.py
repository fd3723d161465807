"""docker/: every YAML parses, the images run retia commands, the dispatcher is torch-free, Compose runs."""

from __future__ import annotations

import importlib.metadata
import json
import re
import shlex
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from retia.errors import ConfigError
from retia.keys import load_key

from .files import (
    DOCKER,
    K8S,
    KEY_TARGET,
    PORT,
    ROOT,
    SUBCOMMAND_OF_IMAGE,
    child_env,
    cmd,
    compose_argv,
    compose_images,
    entrypoint,
    free_port,
    load_all,
    load_compose,
    option,
    parse,
    replace_option,
    retia_exe,
    stop,
    wait_for,
    write_key,
)

# ---------------------------------------------------------------- every YAML parses


@pytest.mark.timeout(60)
def test_every_yaml_file_parses() -> None:
    files = sorted([*DOCKER.rglob("*.yaml"), *DOCKER.rglob("*.yml")])
    names = {str(p.relative_to(DOCKER)) for p in files}
    assert {"compose.yaml", "k8s/dispatcher.yaml", "k8s/workers.yaml", "k8s/secret.yaml"} <= names
    for path in files:
        docs = load_all(path)
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
    entry = entrypoint(path)
    assert entry == ["retia", SUBCOMMAND_OF_IMAGE[dockerfile]]
    if cmd(path) != ["--help"]:
        parse(entry + cmd(path), f"{dockerfile} CMD")
    # what it copies exists, and includes what pyproject.toml needs to build
    for line in text.splitlines():
        if line.startswith("COPY"):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), (
                    f"{dockerfile}: COPY {source}: no such path in the repository"
                )
    for needed in ("pyproject.toml", "README.md", "common", "dispatcher", "worker"):
        assert re.search(rf"^COPY .*\b{needed}\b", text, re.M), f"{dockerfile} does not copy {needed}"
    ignore = DOCKER / f"{dockerfile}.dockerignore"
    assert ignore.is_file() and "!pyproject.toml" in ignore.read_text()


@pytest.mark.timeout(60)
def test_worker_image_installs_gpu_torch_before_the_project() -> None:
    text = (DOCKER / "worker.Dockerfile").read_text()
    assert re.search(r"^ARG TORCH_INDEX_URL=https://download\.pytorch\.org/whl/cu\d+$", text, re.M)
    assert re.search(r"^FROM \$\{CUDA_IMAGE\}$", text, re.M) and "ARG CUDA_IMAGE=nvidia/cuda:" in text
    torch_at = re.search(
        r'^RUN pip install --index-url "\$\{TORCH_INDEX_URL\}" "\$\{TORCH_SPEC\}"$', text, re.M
    )
    project_at = re.search(r"^RUN pip install /src\b", text, re.M)
    assert torch_at and project_at and torch_at.start() < project_at.start()


@pytest.mark.timeout(60)
def test_dispatcher_image_installs_exactly_the_dispatcher_imports(tmp_path: Path) -> None:
    """The slim image's explicit pip list == the distributions the dispatcher side imports (+ their deps)."""
    text = (DOCKER / "dispatcher.Dockerfile").read_text()
    assert "pip install --no-deps /src" in text
    installs = [
        m for m in re.findall(r"pip install ([^\n&\\]+)", text) if "/src" not in m and "--upgrade" not in m
    ]
    assert not any("torch" in m or "lightning" in m for m in installs), installs
    assert len(installs) == 1, installs
    listed = {_norm(re.split(r"[<>=!~ ]", req.strip("\"'"))[0]) for req in shlex.split(installs[0])}

    script = textwrap.dedent(
        """
        import importlib.metadata, json, sys
        at_startup = set(sys.modules)  # site hooks (e.g. setuptools' _distutils_hack), not retia's doing
        import retia.cli, retia.dispatcher.service, retia.dispatcher.cli, retia.client.backend
        import rich.console, rich.table          # run_status's table (imported lazily)
        retia.cli.build_parser()
        tops = {m.split(".")[0] for m in set(sys.modules) - at_startup}
        tops -= set(sys.stdlib_module_names) | {"retia"}
        dists = importlib.metadata.packages_distributions()
        print(json.dumps(sorted({d for t in tops for d in dists.get(t, [])})))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=child_env()
    )
    assert out.returncode == 0, out.stderr
    imported = {_norm(d) for d in json.loads(out.stdout)}
    assert listed <= imported, (
        f"the dispatcher image installs {sorted(listed - imported)}, which it never imports"
    )
    assert imported <= _closure(listed), (
        f"the dispatcher imports {sorted(imported - _closure(listed))}, not installed"
    )


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
    out = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, timeout=60, env=child_env()
    )
    assert out.returncode == 0, out.stderr

    # And a running dispatcher answering `retia status` with torch made unimportable.
    blocked = (
        "import sys\n"
        "for name in ('torch', 'pytorch_lightning', 'lightning', 'numpy', 'sklearn'):\n"
        "    sys.modules[name] = None  # any import of these now raises ImportError\n"
        "from retia.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    key = write_key(tmp_path / "cluster.key", 0o600)
    ready = tmp_path / "ready"
    address = f"tcp://127.0.0.1:{free_port()}"
    dispatcher = subprocess.Popen(
        [
            sys.executable,
            "-c",
            blocked,
            "dispatcher",
            "--bind",
            address,
            "--home",
            str(tmp_path / "home"),
            "--key-file",
            str(key),
            "--ready-file",
            str(ready),
        ],
        env=child_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    processes.append(dispatcher)
    wait_for(ready, dispatcher, 30)
    for extra in ([], ["--json"]):
        status = subprocess.run(
            [sys.executable, "-c", blocked, "status", address, "--key-file", str(key), *extra],
            capture_output=True,
            text=True,
            timeout=30,
            env=child_env(),
        )
        assert status.returncode == 0, status.stderr
    assert stop(dispatcher) == 0, dispatcher.stderr.read() if dispatcher.stderr else ""


# ---------------------------------------------------------------- compose.yaml


@pytest.mark.timeout(60)
def test_compose_services_reference_dockerfiles_and_valid_commands() -> None:
    compose = load_compose()
    services = compose["services"]
    images = compose_images()
    assert {p.name for p in images.values()} == set(SUBCOMMAND_OF_IMAGE)
    workers = {name: s for name, s in services.items() if name.startswith("worker-")}
    assert "dispatcher" in services and len(workers) >= 2

    dispatcher = services["dispatcher"]
    args = parse(compose_argv(dispatcher), "compose dispatcher")
    assert args.command == "dispatcher"
    assert args.bind == f"tcp://0.0.0.0:{PORT}"
    assert str(args.key_file) == KEY_TARGET and str(args.home) == "/state"
    assert f"{PORT}:{PORT}" in [str(p) for p in dispatcher["ports"]]
    assert any(str(v).split(":")[1] == "/state" for v in dispatcher["volumes"])
    health = dispatcher["healthcheck"]["test"]
    assert health[0] == "CMD"
    health_args = parse(health[1:], "compose dispatcher healthcheck")
    assert health_args.command == "status" and str(health_args.key_file) == KEY_TARGET

    gpus = []
    for name, service in workers.items():
        assert Path(service["build"]["dockerfile"]).name == "worker.Dockerfile", name
        args = parse(compose_argv(service), f"compose {name}")
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
    assert len({option(compose_argv(s), "--name") for s in workers.values()}) == len(workers)

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
    services = load_compose()["services"]
    key = write_key(tmp_path / "retia_key", 0o400)  # what the 0400 secret mount gives the container
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    ready = tmp_path / "dispatcher.ready"

    argv = compose_argv(services["dispatcher"])
    argv = replace_option(argv, "--bind", f"tcp://127.0.0.1:{port}")
    argv = replace_option(argv, "--home", str(tmp_path / "state"))
    argv = replace_option(argv, "--key-file", str(key))
    argv += ["--ready-file", str(ready)]
    parse(argv, "local dispatcher")
    dispatcher = subprocess.Popen(
        retia_exe() + argv[1:], env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    processes.append(dispatcher)
    wait_for(ready, dispatcher, 30)
    assert ready.read_text() == address
    assert stat.S_IMODE(key.stat().st_mode) == 0o400  # accepted as is, not rewritten
    assert (tmp_path / "state" / "journal.sqlite").exists()

    # the healthcheck command, pointed at the local key
    health = replace_option(services["dispatcher"]["healthcheck"]["test"][1:], "--key-file", str(key))
    health = [address if a.startswith("tcp://127.0.0.1:") else a for a in health]
    out = subprocess.run(
        retia_exe() + health[1:], capture_output=True, text=True, timeout=30, env=child_env()
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["workers"] == []

    # worker-0's exact command, connected to it (on a CPU machine --gpu 0 only sets CUDA_VISIBLE_DEVICES)
    wargv = compose_argv(services["worker-0"])
    wargv = replace_option(wargv, "--connect", address)
    wargv = replace_option(wargv, "--key-file", str(key))
    wargv = replace_option(wargv, "--home", str(tmp_path / "worker"))
    worker = subprocess.Popen(
        retia_exe() + wargv[1:], env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    processes.append(worker)
    deadline = time.monotonic() + 90
    workers: list[dict[str, Any]] = []
    while not workers:
        assert worker.poll() is None, (
            f"worker exited {worker.returncode}: {worker.stderr.read() if worker.stderr else ''}"
        )
        assert time.monotonic() < deadline, "the worker never showed up in retia status"
        out = subprocess.run(
            retia_exe() + ["status", address, "--key-file", str(key), "--json"],
            capture_output=True,
            text=True,
            timeout=30,
            env=child_env(),
        )
        assert out.returncode == 0, out.stderr
        workers = json.loads(out.stdout)["workers"]
        time.sleep(0.3)
    assert workers[0]["worker_id"] == option(wargv, "--name") and workers[0]["gpu"] == "0"

    # the plain (rich table) status as a person would type it
    out = subprocess.run(
        retia_exe() + ["status", address, "--key-file", str(key)],
        capture_output=True,
        text=True,
        timeout=30,
        env=child_env(),
    )
    assert out.returncode == 0 and "worker-0" in out.stdout, out.stderr

    assert stop(worker, timeout=30) == 0, worker.stderr.read() if worker.stderr else ""
    assert stop(dispatcher) == 0, dispatcher.stderr.read() if dispatcher.stderr else ""


@pytest.mark.timeout(60)
def test_a_group_readable_key_is_refused_so_the_docs_say_chmod_600(tmp_path: Path) -> None:
    """Compose ignores `mode` for file secrets: the host file's mode reaches the container."""
    assert load_key(write_key(tmp_path / "a", 0o400))
    assert load_key(write_key(tmp_path / "b", 0o600))
    with pytest.raises(ConfigError, match="chmod 600"):
        load_key(write_key(tmp_path / "c", 0o444))  # compose's default secret mode
    readme = (DOCKER / "README.md").read_text()
    assert "chmod 600" in readme and "umask 077" in readme
    assert "TCP 5555" in readme or "TCP port: 5555" in readme
