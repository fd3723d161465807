"""docker/: every YAML parses, the images run retia commands, the dispatcher is torch-free, Compose runs."""

from __future__ import annotations

import importlib.metadata
import json
import os
import pwd
import re
import shlex
import socket
import stat
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from retia.credentials import Credential, Role, issue
from retia.encryption import public_key
from retia.errors import ConfigError

from .files import (
    DOCKER,
    DOCKER_README,
    K8S,
    PORT,
    ROOT,
    STATE,
    SUBCOMMAND_OF_IMAGE,
    TRIAL_USER,
    assert_no_cluster_key,
    child_env,
    cmd,
    compose_argv,
    compose_images,
    entrypoint,
    free_port,
    load_all,
    load_compose,
    localize,
    option,
    parse,
    readme_block_lines,
    retia_after,
    run_retia,
    run_trial,
    runnable_here,
    shell_words,
    start_retia,
    status_json,
    stop,
    wait_for,
    wait_for_worker,
    with_port,
    write_key,
)

# ---------------------------------------------------------------- every YAML parses


@pytest.mark.timeout(60)
def test_every_yaml_file_parses() -> None:
    files = sorted([*DOCKER.rglob("*.yaml"), *DOCKER.rglob("*.yml")])
    names = {str(p.relative_to(DOCKER)) for p in files}
    assert {"compose.yaml", "k8s/dispatcher.yaml", "k8s/workers.yaml", "k8s/kustomization.yaml"} <= names
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
        import retia.dispatcher.credential_cli, retia.encryption   # the one-shot `retia credential`
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
    # the one-shot `retia credential issue` runs in this image too
    issued = subprocess.run(
        [
            sys.executable,
            "-c",
            blocked,
            "credential",
            "--home",
            str(tmp_path / "home"),
            "--key-file",
            str(key),
        ]
        + [
            "issue",
            "--role",
            "worker",
            "--name",
            "workers",
            "--address",
            "tcp://dispatcher:5555",
            "--out",
            "-",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env=child_env(),
    )
    assert issued.returncode == 0 and Credential.from_json(issued.stdout).server_key, issued.stderr
    assert stop(dispatcher) == 0, dispatcher.stderr.read() if dispatcher.stderr else ""


# ---------------------------------------------------------------- compose.yaml


def _credentials_argv(service: dict[str, Any], command: list[str] | None = None) -> list[str]:
    """The one-shot credentials service's argv: its entrypoint (retia credential ...) + command."""
    entry = list(service["entrypoint"])
    assert entry[:2] == ["retia", "credential"], entry
    return entry + list(service["command"] if command is None else command)


def _worker_mounts(service: dict[str, Any]) -> dict[str, str]:
    """A Compose service's volume mounts: target -> source (``:ro`` kept on the source)."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target, *flags = str(volume).split(":")
        mounts[target] = source + "".join(f":{f}" for f in flags)
    return mounts


@pytest.mark.timeout(60)
def test_compose_services_reference_dockerfiles_and_valid_commands() -> None:
    compose = load_compose()
    services = compose["services"]
    images = compose_images()
    assert {p.name for p in images.values()} == set(SUBCOMMAND_OF_IMAGE)
    workers = {name: s for name, s in services.items() if name.startswith("worker")}
    assert {"dispatcher", "credentials"} <= set(services)
    assert "secrets" not in compose, "the cluster key comes from no host file: the dispatcher makes it"

    dispatcher = services["dispatcher"]
    args = parse(compose_argv(dispatcher), "compose dispatcher")
    assert args.command == "dispatcher"
    assert args.bind == f"tcp://0.0.0.0:{PORT}" and not args.insecure  # encrypted
    assert args.key_file is None and str(args.home) == STATE  # the key: <home>/cluster.key, in the volume
    assert f"{PORT}:{PORT}" in [str(p) for p in dispatcher["ports"]]
    state_volume = _worker_mounts(dispatcher)[STATE]
    assert state_volume in compose["volumes"]
    health = dispatcher["healthcheck"]["test"]
    assert health[0] == "CMD"
    health_args = parse(health[1:], "compose dispatcher healthcheck")
    assert health_args.command == "status"
    assert str(health_args.key_file) == f"{STATE}/cluster.key"
    assert str(health_args.curve_server_key) == f"{STATE}/curve/dispatcher.key"

    # the one-shot that issues the workers' credential: after the dispatcher, from its volume
    credentials = services["credentials"]
    assert credentials["image"] == dispatcher["image"] and credentials["restart"] == "no"
    assert credentials["depends_on"]["dispatcher"]["condition"] == "service_healthy"
    issue = parse(_credentials_argv(credentials), "compose credentials")
    assert issue.command == "credential" and issue.action == "issue" and str(issue.home) == STATE
    assert issue.role == "worker" and issue.force and not issue.insecure
    assert issue.address == f"tcp://dispatcher:{PORT}"  # the dispatcher's service name: the key goes in
    cred_mounts = _worker_mounts(credentials)
    assert cred_mounts[STATE] == state_volume
    out_dir, out_name = issue.out.rsplit("/", 1)
    credential_volume = cred_mounts[out_dir]

    for name, service in workers.items():
        assert Path(service["build"]["dockerfile"]).name == "worker.Dockerfile", name
        argv = compose_argv(service)
        args = parse(argv, f"compose {name}")
        assert args.command == "worker"
        assert args.connect == "", f"{name}: the address comes from the credential"
        # one agent per GPU the container was given, under one supervisor
        assert args.gpus == "all" and args.gpu == "none", f"{name}: --gpus all, no --gpu of its own"
        assert args.trial_user == TRIAL_USER, f"{name}: trials must not run as root"
        assert service["depends_on"]["dispatcher"]["condition"] == "service_healthy"
        assert service["depends_on"]["credentials"]["condition"] == "service_completed_successfully"
        mounts = _worker_mounts(service)
        target, file = str(args.credential).rsplit("/", 1)
        assert file == out_name and mounts[target] == f"{credential_volume}:ro", name
        # the cluster key stays with the dispatcher: not in the command, the mounts nor the environment
        assert state_volume not in {m.split(":")[0] for m in mounts.values()}, name
        assert "secrets" not in service, name
        assert_no_cluster_key(name, argv, mounts, service.get("environment", {}))
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
        assert device["count"] == "all", f"{name}: the machine's GPUs, for --gpus all"
    assert len(workers) == 1, f"one worker service takes all the GPUs: {sorted(workers)}"


def _compose_readme_commands() -> dict[str, list[str]]:
    """docker/README.md's Compose commands a person types, as retia argv: the status in the
    dispatcher container, and the client credential issued through the credentials service."""
    hostname = socket.gethostname()
    found: dict[str, list[str]] = {}
    for line in readme_block_lines("Docker Compose"):
        words = shell_words(line.lstrip("(").removeprefix("umask 077; "), {"hostname": hostname})
        if words[:2] != ["docker", "compose"]:
            continue
        if "exec" in words:
            found["status"] = retia_after(words, ["exec", "dispatcher"])
        elif "run" in words:
            service = load_compose()["services"]["credentials"]
            found["client"] = _credentials_argv(service, retia_after(words, ["-T", "credentials"]))
            assert "> alice.cred)" in line and line.startswith("(umask 077;"), line
    assert set(found) == {"status", "client"}, found
    return found


@pytest.mark.timeout(240)
def test_compose_commands_run_for_real(
    tmp_path: Path,
    passable_dir: Path,
    processes: list[subprocess.Popen[Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """compose.yaml's exact commands in their order (dispatcher, healthcheck, credentials, worker),
    then the README's client credential and one trial through it, paths made local."""
    services = load_compose()["services"]
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    state, volume = tmp_path / "state", tmp_path / "worker-credential"
    ready = tmp_path / "dispatcher.ready"
    head = {STATE: state, "/credentials": volume}

    # 1. the dispatcher: it creates the cluster key and the certificate in its volume
    argv = with_port(localize(compose_argv(services["dispatcher"]), head), port) + [
        "--ready-file",
        str(ready),
    ]
    dispatcher = start_retia(argv, processes)
    wait_for(ready, dispatcher, 30)
    assert ready.read_text() == f"tcp://0.0.0.0:{port}"
    assert stat.S_IMODE((state / "cluster.key").stat().st_mode) == 0o600
    assert (state / "curve" / "dispatcher.key").is_file() and (state / "journal.sqlite").exists()

    # 2. its healthcheck; without the certificate nobody gets in: the transport is encrypted
    health = localize(services["dispatcher"]["healthcheck"]["test"][1:], head)
    health = [address if a.startswith("tcp://127.0.0.1:") else a for a in health]
    assert status_json(health)["workers"] == []
    bare = health[: health.index("--curve-server-key")] + health[health.index("--curve-server-key") + 2 :]
    assert run_retia(bare, timeout=30).returncode != 0

    # 3. the one-shot credentials service, into the workers' volume
    issued = run_retia(localize(_credentials_argv(services["credentials"]), head))
    assert issued.returncode == 0, issued.stderr
    (cred_file,) = volume.iterdir()
    assert stat.S_IMODE(cred_file.stat().st_mode) == 0o600
    worker_cred = Credential.load(cred_file)
    assert worker_cred.role is Role.WORKER and worker_cred.address == f"tcp://dispatcher:{PORT}"
    assert worker_cred.server_key == public_key(state / "curve" / "dispatcher.key")
    assert run_retia(localize(_credentials_argv(services["credentials"]), head)).returncode == 0  # next `up`

    # 4. the worker's exact command with that volume, given one 'GPU' (on a CPU machine the
    #    CUDA_VISIBLE_DEVICES its one agent hands on); the credential names tcp://dispatcher:5555,
    #    so --connect is added
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    wargv = compose_argv(services["worker"])
    local = {"/run/retia": volume, "/var/lib/retia": passable_dir / "worker"}
    wargv = runnable_here(localize(wargv, local)) + ["--connect", address]
    worker = start_retia(wargv, processes)
    row = wait_for_worker(health, worker, option(wargv, "--name") + "-gpu0")
    assert row["gpu"] == "0"

    # 5. the README's commands: status in the dispatcher container, the client credential (stdout)
    readme = _compose_readme_commands()
    status = localize(readme["status"], head)
    status = [address if a == f"tcp://127.0.0.1:{PORT}" else a for a in status]
    out = run_retia(status, timeout=30)
    assert out.returncode == 0 and "worker-gpu0" in out.stdout, out.stderr
    client_file = tmp_path / "alice.cred"
    with os.fdopen(os.open(client_file, os.O_WRONLY | os.O_CREAT, 0o600), "w") as sink:  # umask 077
        assert (
            run_retia(localize(readme["client"], head), stdout=sink, stderr=subprocess.PIPE).returncode == 0
        )
    client = Credential.load(client_file)
    assert client.role is Role.CLIENT and client.server_key == worker_cred.server_key

    # 6. a trial, submitted with the client credential: as nobody (when root), no key in sight
    seen = run_trial(address, client_file, cred_file)
    assert seen["secrets"] == 0, seen
    if os.geteuid() == 0:  # --trial-user kept: the trial cannot even read the worker's credential
        assert seen["uid"] == pwd.getpwnam(TRIAL_USER).pw_uid and seen["reads"] == 0, seen

    assert stop(worker, timeout=30) == 0, worker.stderr.read() if worker.stderr else ""
    assert stop(dispatcher) == 0, dispatcher.stderr.read() if dispatcher.stderr else ""


@pytest.mark.timeout(60)
def test_a_group_readable_credential_is_refused_so_the_docs_say_umask_077(tmp_path: Path) -> None:
    """A credential written through a shell redirect takes the umask: 0644 by default, refused."""
    credential = issue(b"ab" * 32, Role.CLIENT, "alice")
    for mode in (0o400, 0o600):
        (tmp_path / "ok").write_text(credential.to_json())
        (tmp_path / "ok").chmod(mode)
        assert Credential.load(tmp_path / "ok").name == "alice"
    (tmp_path / "shell").write_text(credential.to_json())
    (tmp_path / "shell").chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        Credential.load(tmp_path / "shell")
    readme = DOCKER_README.read_text()
    assert "umask 077" in readme and "fsGroup" in readme
    assert "TCP 5555" in readme or "TCP port: 5555" in readme
