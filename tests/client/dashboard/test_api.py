"""The JSON API over a real small experiment: overview, paged/sorted/filtered trials, one trial, its log,
files and ONNX graph; the token off loopback; refused file names; the cluster's workers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from retia.client.dashboard import ClusterSource, ExperimentSource, create_app
from retia.errors import ConfigError

from .conftest import Ran
from .dash_fits import EXPORTING, FAILING, score_of

pytestmark = pytest.mark.timeout(120)


def _client(ran: Ran, **kwargs: object) -> TestClient:
    return TestClient(create_app(ExperimentSource(ran.path), **kwargs), base_url="http://127.0.0.1")  # type: ignore[arg-type]


def _key(ran: Ran, arch: dict[str, object]) -> int:
    [key] = [r.key for r in ExperimentSource(ran.path).results() if r.arch == arch]
    return key


def test_overview_counts_the_trials_and_names_the_best(ran: Ran) -> None:
    o = _client(ran).get("/api/overview").json()
    assert o["trials"] == 6 and o["counts"]["SUCCEEDED"] == 5 and o["counts"]["FAILED"] == 1
    assert o["best"]["arch"] == EXPORTING and o["best"]["metric"] == score_of(EXPORTING)
    assert o["labels"] == ["width", "act"] and o["trials_per_minute"] > 0 and o["remaining_trials"] == 0


def test_trials_are_sorted_filtered_and_paged_on_the_server(ran: Ran) -> None:
    client = _client(ran)
    page = client.get("/api/trials", params={"sort": "metric", "order": "desc", "per_page": 2}).json()
    assert page["total"] == 6 and [r["arch"] for r in page["rows"]][0] == EXPORTING and len(page["rows"]) == 2
    last = client.get("/api/trials", params={"sort": "metric", "per_page": 4, "page": 2}).json()["rows"]
    assert [r["metric"] for r in last] == [1.0, None]  # the failed trial's missing metric sorts last
    tanh = client.get("/api/trials", params={"q": "act=tanh"}).json()
    assert tanh["total"] == 3 and {r["arch"]["act"] for r in tanh["rows"]} == {"tanh"}
    failed = client.get("/api/trials", params={"state": "failed"}).json()
    assert [r["arch"] for r in failed["rows"]] == [FAILING]
    by_width = client.get("/api/trials", params={"sort": "arch.width", "order": "desc"}).json()["rows"]
    assert [r["arch"]["width"] for r in by_width] == [16, 16, 8, 8, 4, 4]
    bad = client.get("/api/trials", params={"sort": "nope", "per_page": 0})
    assert (
        bad.status_code == 400 and "sort must be" in bad.json()["error"] and "per_page" in bad.json()["error"]
    )


def test_one_trial_has_its_reports_log_traceback_files_and_graph(ran: Ran) -> None:
    client = _client(ran)
    failed = client.get(f"/api/trials/{_key(ran, FAILING)}").json()
    assert failed["row"]["state"] == "FAILED" and "fails on purpose" in failed["traceback"]
    assert failed["traceback"].startswith("Traceback (most recent call last):")
    key = _key(ran, EXPORTING)
    ok = client.get(f"/api/trials/{key}").json()
    assert len(ok["intermediates"]) == 3 and ok["final"] == 1.0 and ok["has_onnx"] and ok["traceback"] == ""
    assert {f["name"] for f in ok["files"]} >= {"trial.log", "model.onnx"}
    assert "dashboard-fit training 16-relu" in client.get(f"/api/trials/{key}/log").json()["text"]
    onnx = client.get(f"/api/trials/{key}/files/model.onnx")
    assert onnx.status_code == 200 and onnx.content == (Path(ok["output_dir"]) / "model.onnx").read_bytes()
    graph = client.get(f"/api/trials/{key}/graph").json()
    assert [n["op"] for n in graph["nodes"]] == ["Gemm", "Relu", "Gemm"]
    curves = client.get("/api/curves", params={"keys": str(key)}).json()["curves"]
    assert curves == [{"key": key, "values": pytest.approx([1 / 3, 2 / 3, 1.0])}]
    metrics = client.get("/api/metrics").json()
    assert len(metrics["keys"]) == 5 and metrics["best"][-1] == 1.0
    assert client.get("/api/trials/99").status_code == 404


@pytest.mark.parametrize(
    "name",
    [
        "..%2F..%2F..%2Fetc%2Fpasswd",
        "/etc/passwd",
        "%2Fetc%2Fpasswd",
        "a%2F..%2F..%2Fx",
        "%2E%2E",
        "%5C..%5Cx",
        "a%00b",
    ],
)
def test_file_names_outside_the_trial_are_refused(ran: Ran, name: str) -> None:
    response = _client(ran).get(f"/api/trials/0/files/{name}")
    assert response.status_code == 400 and response.json()["error"].startswith("refused: artefact name")


def test_off_loopback_every_request_needs_the_token(ran: Ran) -> None:
    client = TestClient(
        create_app(ExperimentSource(ran.path), token="s3cret", loopback=False), base_url="http://10.1.2.3"
    )
    refused = client.get("/api/overview")
    assert refused.status_code == 401 and "token" in refused.json()["error"]
    assert client.get("/", follow_redirects=False).status_code == 401
    assert client.get("/api/overview", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/api/overview", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    opened = client.get("/trials?token=s3cret", follow_redirects=False)
    assert opened.status_code == 303 and opened.headers["location"] == "/trials"
    assert client.get("/api/overview").status_code == 200  # the cookie it set


def test_on_loopback_a_foreign_host_header_is_refused(ran: Ran) -> None:
    """A page of another site reaching 127.0.0.1 by DNS rebinding names its own host."""
    client = TestClient(create_app(ExperimentSource(ran.path)), base_url="http://attacker.example")
    assert client.get("/api/overview").status_code == 400
    assert (
        _client(ran).get("/api/overview").headers["content-security-policy"].startswith("default-src 'self'")
    )


def test_the_cli_generates_a_token_off_loopback_and_refuses_a_bad_path(tmp_path: Path) -> None:
    cli = [sys.executable, "-m", "retia", "dashboard"]
    bad = subprocess.run([*cli, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "not an experiment directory" in bad.stderr
    env = {**os.environ, "RETIA_CREDENTIAL": ""}
    needs = subprocess.run([*cli, "tcp://127.0.0.1:1"], capture_output=True, text=True, timeout=60, env=env)
    assert needs.returncode == 2 and "credential" in needs.stderr


def test_the_cluster_endpoint_lists_the_workers(ran: Ran) -> None:
    cluster = ClusterSource(ran.backend.address, ran.credential)
    try:
        client = TestClient(create_app(None, cluster), base_url="http://127.0.0.1")
        body = client.get("/api/cluster").json()
        assert len(body["workers"]) == 2 and all(w["state"] for w in body["workers"])
        assert client.get("/api/overview").status_code == 404
    finally:
        cluster.close()
    with pytest.raises(ConfigError, match="credential"):
        ClusterSource(ran.backend.address, None)
