"""docker/k8s and docker/slurm: manifests and the sbatch script against the real retia CLI."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from retia.credentials import Credential, Role
from retia.encryption import public_key

from .files import (
    K8S,
    PORT,
    SBATCH,
    SLURM_SAMPLES,
    STATE,
    TRIAL_USER,
    assert_no_cluster_key,
    child_env,
    compose_images,
    free_port,
    k8s,
    k8s_argv,
    load_all,
    localize,
    parse,
    readme_block_lines,
    run_retia,
    runnable_here,
    sbatch_retia_commands,
    secret_mount,
    shell_words,
    start_retia,
    status_json,
    stop,
    wait_for,
    wait_for_worker,
    with_port,
)

# ---------------------------------------------------------------- Kubernetes

WORKER_SECRET = "retia-worker-credential"


def _mounted_volumes(pod: dict[str, Any], container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """mountPath -> the pod volume mounted there."""
    volumes = {v["name"]: v for v in pod["volumes"]}
    return {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}


@pytest.mark.timeout(60)
def test_k8s_dispatcher_deployment_and_service() -> None:
    deployment = k8s("Deployment", "retia-dispatcher")
    assert deployment["spec"]["replicas"] == 1
    pod = deployment["spec"]["template"]["spec"]
    assert "fsGroup" not in pod.get("securityContext", {}), "fsGroup makes the state group-readable"
    (container,) = pod["containers"]
    args = parse(k8s_argv(container, pod), "k8s dispatcher")
    assert args.command == "dispatcher" and args.bind == f"tcp://0.0.0.0:{PORT}" and not args.insecure
    assert args.key_file is None and str(args.home) == STATE  # the key: created in the PVC
    assert container["ports"][0]["containerPort"] == PORT
    # state: a PVC at --home (the key and the certificate must survive the pod)
    volume = _mounted_volumes(pod, container)[str(args.home)]
    k8s("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
    probe = container["readinessProbe"]["exec"]["command"]
    probe_args = parse(probe, "k8s readinessProbe")
    assert probe_args.command == "status" and str(probe_args.key_file) == f"{STATE}/cluster.key"
    assert str(probe_args.curve_server_key) == f"{STATE}/curve/dispatcher.key"

    service = k8s("Service", "retia-dispatcher")
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert [p["port"] for p in service["spec"]["ports"]] == [PORT]


@pytest.mark.timeout(60)
def test_k8s_workers_one_pod_per_node_with_the_worker_credential_only() -> None:
    statefulset = k8s("StatefulSet", "retia-worker")
    k8s("Service", statefulset["spec"]["serviceName"])
    pod = statefulset["spec"]["template"]["spec"]
    assert "fsGroup" not in pod.get("securityContext", {})
    (container,) = pod["containers"]
    argv = k8s_argv(container, pod)
    args = parse(argv, "k8s worker")
    assert args.command == "worker" and args.trial_user == TRIAL_USER
    # one agent per GPU the pod was given, under one supervisor: --gpus all, no --gpu of its own
    assert args.gpus == "all" and args.gpu == "none"
    assert args.connect == "", "the address comes from the credential"
    assert container["resources"]["limits"]["nvidia.com/gpu"] >= 1
    secret = secret_mount(pod, container, str(args.credential))
    assert secret["defaultMode"] == 0o400 and secret["secretName"] == WORKER_SECRET
    mounts = _mounted_volumes(pod, container)
    assert "/dev/shm" in mounts
    # nothing of the head node's: no PVC, no other Secret, no key in the command or environment
    assert not [v for v in mounts.values() if "persistentVolumeClaim" in v]
    assert [v["secret"]["secretName"] for v in mounts.values() if "secret" in v] == [WORKER_SECRET]
    assert_no_cluster_key("the k8s worker", argv, mounts, container.get("env", []))


def _issue_commands() -> list[tuple[list[str], str, str]]:
    """docker/README.md's `kubectl exec deploy/retia-dispatcher -- retia credential ... | kubectl create
    secret generic NAME --from-file=KEY=/dev/stdin`: (retia argv, NAME, KEY) each."""
    found = []
    for line in readme_block_lines("Kubernetes"):
        match = re.fullmatch(
            r"kubectl exec deploy/retia-dispatcher -- (retia credential .*) \| "
            r"kubectl create secret generic (\S+) --from-file=(\S+)=/dev/stdin",
            line.strip(),
        )
        if match:
            found.append((shlex.split(match.group(1)), match.group(2), match.group(3)))
    assert found, "docker/README.md shows no credential piped into a Secret"
    return found


@pytest.mark.timeout(60)
def test_k8s_kustomization_and_the_credential_command_it_shows() -> None:
    kustomization = load_all(K8S / "kustomization.yaml")[0]
    for resource in kustomization["resources"]:
        assert (K8S / resource).is_file(), resource
    assert "secretGenerator" not in kustomization, "no key or credential comes from the operator's disk"
    assert {i["name"] for i in kustomization["images"]} == set(compose_images())
    assert not (K8S / "secret.yaml").exists()
    # the issuing command in the kustomization's comment is the README's
    comment = " ".join(
        line.lstrip("#").strip().rstrip("\\").strip()
        for line in (K8S / "kustomization.yaml").read_text().splitlines()
        if line.startswith("#")
    )
    ((argv, name, key),) = [c for c in _issue_commands() if c[1] == WORKER_SECRET]
    command = f"kubectl exec deploy/retia-dispatcher -- {shlex.join(argv)} | kubectl create secret"
    assert " ".join(command.split()) in " ".join(comment.split())
    assert f"generic {name} --from-file={key}=/dev/stdin" in comment


@pytest.mark.timeout(240)
def test_k8s_commands_run_for_real(
    tmp_path: Path,
    passable_dir: Path,
    processes: list[subprocess.Popen[Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The dispatcher's args, its probe, the README's kubectl-exec commands (the workers' Secret, the
    status, a client's credential) and the worker's args, in that order, paths made local. The pod
    is given one 'GPU' (on a CPU machine it is only the CUDA_VISIBLE_DEVICES its agent hands on)."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    deployment = k8s("Deployment", "retia-dispatcher")["spec"]["template"]["spec"]
    statefulset = k8s("StatefulSet", "retia-worker")["spec"]["template"]["spec"]
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    head = {STATE: tmp_path / "state"}
    ready = tmp_path / "dispatcher.ready"

    (container,) = deployment["containers"]
    argv = with_port(localize(k8s_argv(container, deployment), head), port) + ["--ready-file", str(ready)]
    dispatcher = start_retia(argv, processes)
    wait_for(ready, dispatcher, 30)
    probe = localize(container["readinessProbe"]["exec"]["command"], head)
    probe = [address if a == f"tcp://127.0.0.1:{PORT}" else a for a in probe]
    assert status_json(probe)["workers"] == []

    # the Secrets, as `kubectl create secret --from-file=KEY=/dev/stdin` stores the command's output
    secrets: dict[str, Path] = {}
    for issue_argv, name, key in _issue_commands():
        out = run_retia(localize(issue_argv, head))
        assert out.returncode == 0, out.stderr
        secrets[name] = tmp_path / name / key
        secrets[name].parent.mkdir()
        secrets[name].write_text(out.stdout)
        secrets[name].chmod(0o400)  # the Secret's defaultMode
    worker_cred = Credential.load(secrets[WORKER_SECRET])
    assert worker_cred.role is Role.WORKER and worker_cred.address == f"tcp://retia-dispatcher:{PORT}"
    assert worker_cred.server_key == public_key(tmp_path / "state" / "curve" / "dispatcher.key")

    (wcontainer,) = statefulset["containers"]
    (mount,) = [
        m
        for m in wcontainer["volumeMounts"]
        if m["mountPath"] != "/dev/shm"
        and "secret" in _mounted_volumes(statefulset, wcontainer)[m["mountPath"]]
    ]
    local = {mount["mountPath"]: secrets[WORKER_SECRET].parent, "/var/lib/retia": passable_dir / "worker"}
    wargv = runnable_here(localize(k8s_argv(wcontainer, statefulset), local)) + ["--connect", address]
    worker = start_retia(wargv, processes)
    wait_for_worker(probe, worker, "sample-pod_name-gpu0")

    # every other `kubectl exec deploy/retia-dispatcher -- retia ...` the README shows runs too
    ran = 0
    for line in readme_block_lines("Kubernetes"):
        words = shell_words(line.lstrip("(").removeprefix("umask 077; "), {})
        if words[:3] == ["kubectl", "exec", "deploy/retia-dispatcher"] and "credential" not in words:
            command = [address if a == f"tcp://127.0.0.1:{PORT}" else a for a in localize(words[4:], head)]
            out = run_retia(command, timeout=30)
            assert out.returncode == 0 and "sample-pod_name" in out.stdout, (command, out.stderr)
            ran += 1
    assert ran == 1

    assert stop(worker, timeout=30) == 0, worker.stderr.read() if worker.stderr else ""
    assert stop(dispatcher) == 0, dispatcher.stderr.read() if dispatcher.stderr else ""


# ---------------------------------------------------------------- Slurm


@pytest.mark.timeout(60)
def test_sbatch_retia_commands_are_accepted() -> None:
    text = SBATCH.read_text()
    if shutil.which("bash"):
        syntax = subprocess.run(["bash", "-n", str(SBATCH)], capture_output=True, text=True, timeout=30)
        assert syntax.returncode == 0, syntax.stderr
    commands = sbatch_retia_commands()
    every = [parse(argv, f"retia.sbatch: {shlex.join(argv)}") for argv in commands]
    assert [a.command for a in every] == ["dispatcher", "credential", "credential", "worker", "status"]
    dispatcher, worker, status = every[0], every[3], every[4]
    issued = {a.role: a for a in every[1:3]}
    assert set(issued) == {"worker", "client"}

    assert dispatcher.bind == "tcp://0.0.0.0:5555" and dispatcher.ready_file is not None
    assert not dispatcher.insecure
    assert str(dispatcher.key_file) == SLURM_SAMPLES["RETIA_KEY_FILE"]
    for role, args in issued.items():  # on the head node, from the dispatcher's key and certificate
        assert (
            args.action == "issue" and args.home == dispatcher.home and args.key_file == dispatcher.key_file
        )
        assert args.address == SLURM_SAMPLES["RETIA_ADDRESS"] and not args.insecure, role
        assert Path(args.out).parent == dispatcher.home, f"{role}: not on the shared home beside the state"
    assert issued["worker"].name == "workers" and issued["client"].name == SLURM_SAMPLES["CLIENT_NAME"]
    assert str(worker.credential) == issued["worker"].out and worker.connect == ""
    assert worker.gpus == "all" and worker.gpu == "none" and worker.name == ""  # <node>-gpuN
    assert worker.gpus_per_trial == 2 and worker.trials_per_gpu == 1 and worker.threads == 8
    assert status.address == SLURM_SAMPLES["RETIA_ADDRESS"]
    assert str(status.curve_server_key) == f"{dispatcher.home}/curve/dispatcher.key"
    # the workers: neither their command nor their environment names the key
    (worker_line,) = [line for line in text.splitlines() if "retia worker --credential" in line]
    (exported,) = [line for line in text.splitlines() if line.startswith("export ")]
    assert_no_cluster_key("the sbatch worker", worker_line, exported)
    assert 'RETIA_CREDENTIAL="$CLIENT_CREDENTIAL" "${RETIA_PYTHON:-python3}" "$@"' in text

    # launch structure: dispatcher on the first node, then one worker task per node
    assert re.search(r"srun [^\n]*--nodelist=\"\$HEAD_NODE\"", text)
    assert re.search(r"srun [^\n]*--ntasks-per-node=1 ", text)
    assert "$HOME/.retia/cluster.key" in text
    order = ["retia dispatcher", '[[ -s "$READY_FILE" ]]', "retia credential", "retia worker --credential"]
    assert [text.index(step) for step in order] == sorted(text.index(step) for step in order)
    assert '"$@" --address "$RETIA_ADDRESS"' in text
    assert os.access(SBATCH, os.X_OK)


@pytest.mark.timeout(60)
def test_sbatch_shares_the_tasks_cpus_among_the_nodes_agents() -> None:
    """The bash that turns the task's CPUs into each trial's --threads, run for real: the CPUs over
    the agents (GPUs / GPUs per trial * trials per GPU), never 0."""
    if not shutil.which("bash"):
        pytest.skip("no bash")
    text = SBATCH.read_text()
    start, end = text.index("GPUS_PER_NODE="), text.index("RETIA_PORT=")
    arithmetic = "\n".join(line for line in text[start:end].splitlines() if not line.startswith("RETIA_"))
    cases = [  # (GPUs, GPUs per trial, trials per GPU, CPUs) -> threads
        (("4", "1", "1", "32"), "8"),
        (("8", "2", "1", "64"), "16"),
        (("2", "1", "4", "16"), "2"),
        (("8", "1", "1", "4"), "1"),
        (("1", "2", "1", "8"), "8"),  # fewer GPUs than a trial asks: the supervisor refuses; no crash here
    ]
    for (gpus, per_trial, per_gpu, cpus), expected in cases:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "RETIA_GPUS_PER_NODE": gpus,
            "RETIA_GPUS_PER_TRIAL": per_trial,
            "RETIA_TRIALS_PER_GPU": per_gpu,
            "SLURM_CPUS_PER_TASK": cpus,
        }
        out = subprocess.run(
            ["bash", "-c", arithmetic + '\necho "$THREADS"'],
            capture_output=True,
            text=True,
            env=env,
            timeout=30,
        )
        assert out.stdout.strip() == expected, (gpus, per_trial, per_gpu, cpus, out.stdout, out.stderr)


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
import argparse, json, os, sys, time
import retia
from retia import FunctionalEvaluator, report_final_result
from retia.credentials import Credential

def probe(model):
    secrets = [k for k in ("RETIA_KEY", "RETIA_CREDENTIAL") if k in os.environ]
    report_final_result({"default": 1.0, "secrets": len(secrets)})

class Model:
    pass

parser = argparse.ArgumentParser()
parser.add_argument("--workers", type=int)
parser.add_argument("--address")
args = parser.parse_args()
mine = Credential.load(os.environ["RETIA_CREDENTIAL"])  # what the job gave this script
print("CREDENTIAL", mine.role.value, mine.name, bool(mine.server_key), flush=True)
with retia.connect(args.address) as backend:  # $RETIA_CREDENTIAL: a client's
    deadline = time.monotonic() + 90
    while len(workers := backend.status().workers) < args.workers:
        if time.monotonic() > deadline:
            sys.exit("no workers")
        time.sleep(0.3)
    print("EXPERIMENT", json.dumps([[w.worker_id, w.gpu] for w in workers]), flush=True)
    result = backend.submit(Model, FunctionalEvaluator(probe)).result(timeout=90)
    print("TRIAL", json.dumps(result), flush=True)
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
    """The whole batch script on this machine: a stub srun/scontrol, one 'GPU' (the
    CUDA_VISIBLE_DEVICES Slurm sets for the job), a tiny experiment."""
    if not shutil.which("bash"):
        pytest.skip("no bash")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(_FAKE_SRUN)
    # the head node's name, as scontrol gives it: not loopback, so the credentials carry the
    # dispatcher's public key (which the dispatcher, bound to 0.0.0.0, requires)
    head_node = socket.gethostname()
    try:
        socket.gethostbyname(head_node)
    except OSError:
        pytest.skip(f"this machine's name {head_node} does not resolve")
    (bin_dir / "scontrol").write_text(f"#!/bin/bash\necho {head_node}\n")
    for tool in ("srun", "scontrol"):
        (bin_dir / tool).chmod(0o755)
    experiment = tmp_path / "experiment.py"
    experiment.write_text(_EXPERIMENT)
    home = tmp_path / "home"
    home.mkdir()
    env = {
        **child_env(),
        "PATH": os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        "HOME": str(home),
        "SLURM_JOB_NODELIST": "node0",
        "USER": "alice",
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NUM_NODES": "1",
        "SLURM_CPUS_PER_TASK": "1",
        "RETIA_GPUS_PER_NODE": "1",
        "RETIA_PORT": str(free_port()),
        "RETIA_WORKER_HOME": str(tmp_path / "worker"),
        "RETIA_PYTHON": sys.executable,
    }
    env["CUDA_VISIBLE_DEVICES"] = "0"
    job = subprocess.Popen(
        ["bash", str(SBATCH), str(experiment), "--workers", "1"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = job.communicate(timeout=200)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()
    assert job.returncode == 0, output
    assert "CREDENTIAL client alice True" in output, output
    # the node's one agent, named by the supervisor for the node and its GPU
    assert f'EXPERIMENT [["{socket.gethostname()}-gpu0", "0"]]' in output, output
    assert 'TRIAL {"default": 1.0, "secrets": 0.0}' in output, output
    assert "experiment exited with status 0" in output
    key = home / ".retia" / "cluster.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600  # created by the dispatcher on first use
    state = home / ".retia" / "slurm-4242"
    assert (state / "journal.sqlite").exists()
    for name, role in (("worker.cred", Role.WORKER), ("client.cred", Role.CLIENT)):
        assert stat.S_IMODE((state / name).stat().st_mode) == 0o600, name
        assert Credential.load(state / name).role is role
    deadline = time.monotonic() + 15  # the trap SIGTERMed the dispatcher and worker steps
    while (left := _procs_mentioning(str(tmp_path))) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"processes left running after the job: {left}"
