"""docker/k8s and docker/slurm: manifests and the sbatch script against the real retia CLI."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from retia.errors import ConfigError
from retia.keys import load_key

from .files import (
    K8S,
    PORT,
    SBATCH,
    SLURM_SAMPLES,
    child_env,
    compose_images,
    free_port,
    k8s,
    k8s_argv,
    load_all,
    option,
    parse,
    sbatch_retia_commands,
    secret_mount,
)

# ---------------------------------------------------------------- Kubernetes


@pytest.mark.timeout(60)
def test_k8s_dispatcher_deployment_and_service() -> None:
    deployment = k8s("Deployment", "retia-dispatcher")
    assert deployment["spec"]["replicas"] == 1
    pod = deployment["spec"]["template"]["spec"]
    assert "fsGroup" not in pod.get("securityContext", {}), "fsGroup makes the key group-readable"
    (container,) = pod["containers"]
    args = parse(k8s_argv(container, pod), "k8s dispatcher")
    assert args.command == "dispatcher" and args.bind == f"tcp://0.0.0.0:{PORT}"
    assert container["ports"][0]["containerPort"] == PORT
    secret = secret_mount(pod, container, str(args.key_file))
    assert secret["defaultMode"] == 0o400 and secret["secretName"] == "retia-cluster-key"
    # state: a mounted volume (PVC or emptyDir) at --home
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volume = {v["name"]: v for v in pod["volumes"]}[mounts[str(args.home)]]
    if "persistentVolumeClaim" in volume:
        k8s("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
    else:
        assert "emptyDir" in volume
    probe = container["readinessProbe"]["exec"]["command"]
    assert parse(probe, "k8s readinessProbe").command == "status"
    assert option(probe, "--key-file") == str(args.key_file)

    service = k8s("Service", "retia-dispatcher")
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert [p["port"] for p in service["spec"]["ports"]] == [PORT]


@pytest.mark.timeout(60)
def test_k8s_workers_one_gpu_each() -> None:
    statefulset = k8s("StatefulSet", "retia-worker")
    k8s("Service", statefulset["spec"]["serviceName"])
    pod = statefulset["spec"]["template"]["spec"]
    assert "fsGroup" not in pod.get("securityContext", {})
    (container,) = pod["containers"]
    args = parse(k8s_argv(container, pod), "k8s worker")
    assert args.command == "worker" and args.gpu == "0"
    assert args.connect == f"tcp://retia-dispatcher:{PORT}"  # the dispatcher Service's DNS name
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    secret = secret_mount(pod, container, str(args.key_file))
    assert secret["defaultMode"] == 0o400 and secret["secretName"] == "retia-cluster-key"
    assert "/dev/shm" in {m["mountPath"] for m in container["volumeMounts"]}


@pytest.mark.timeout(60)
def test_k8s_secret_template_and_kustomization(tmp_path: Path) -> None:
    secret = k8s("Secret", "retia-cluster-key")
    (placeholder,) = secret["stringData"].values()
    assert list(secret["stringData"]) == ["cluster.key"]
    # applied unedited, the template must not yield a working (publicly known) key
    (tmp_path / "placeholder").write_text(placeholder)
    (tmp_path / "placeholder").chmod(0o400)
    with pytest.raises(ConfigError, match="at least 16"):
        load_key(tmp_path / "placeholder")

    kustomization = load_all(K8S / "kustomization.yaml")[0]
    for resource in kustomization["resources"]:
        assert (K8S / resource).is_file(), resource
    (generator,) = kustomization["secretGenerator"]
    assert generator["name"] == "retia-cluster-key"
    assert generator["files"] == ["cluster.key=retia.key"]
    assert {i["name"] for i in kustomization["images"]} == set(compose_images())


# ---------------------------------------------------------------- Slurm


@pytest.mark.timeout(60)
def test_sbatch_retia_commands_are_accepted() -> None:
    text = SBATCH.read_text()
    if shutil.which("bash"):
        syntax = subprocess.run(["bash", "-n", str(SBATCH)], capture_output=True, text=True, timeout=30)
        assert syntax.returncode == 0, syntax.stderr
    commands = sbatch_retia_commands()
    parsed = {argv[1]: parse(argv, f"retia.sbatch: {shlex.join(argv)}") for argv in commands}
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
        out = subprocess.run(
            ["bash", "-c", picker + '\necho "$gpu"'], capture_output=True, text=True, env=env, timeout=30
        )
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
from retia.client.backend import query_status
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
        **child_env(),
        "PATH": os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        "HOME": str(home),
        "SLURM_JOB_NODELIST": "node0",
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NUM_NODES": "1",
        "SLURM_CPUS_PER_TASK": "1",
        "RETIA_GPUS_PER_NODE": "1",
        "RETIA_PORT": str(free_port()),
        "RETIA_WORKER_HOME": str(tmp_path / "worker"),
        "RETIA_PYTHON": sys.executable,
    }
    env.pop("CUDA_VISIBLE_DEVICES", None)
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
