"""Events lost between the dispatcher and a client (the line cut for a moment) are asked for again.

The dispatcher does not see such a loss: the client's route drops for half a second and comes
back under the same id, and what was sent meanwhile is gone. The client sees it as a gap in its
own event numbers (1, 2, 3, ...), or, when the last events were lost, from the dispatcher's
heartbeat, which says the last event it sent; it then replays them from the journal, in order.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from retia import FunctionalEvaluator
from retia.client.backend import Backend, connect
from retia.protocol import TrialState
from tests.clusters import HEARTBEAT_INTERVAL, LIVENESS, fast_cluster
from tests.integration import fits
from tests.netfaults import CuttableProxy

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Backend]:
    with fast_cluster(1, home=tmp_path / "cluster") as backend:
        yield backend


def _through(proxy: CuttableProxy, cluster: Backend) -> Backend:
    return connect(
        proxy.address, credential=cluster.credential, heartbeat_interval=HEARTBEAT_INTERVAL, liveness=LIVENESS
    )


def _cut_when(
    trial_reports: list[float], count: int, proxy: CuttableProxy, seconds: float
) -> threading.Thread:
    def cut() -> None:
        deadline = time.monotonic() + 20
        while len(trial_reports) < count and time.monotonic() < deadline:
            time.sleep(0.005)
        proxy.cut(seconds)

    thread = threading.Thread(target=cut, daemon=True)
    thread.start()
    return thread


def test_reports_lost_on_a_cut_line_arrive_once_and_in_order(cluster: Backend) -> None:
    with CuttableProxy(cluster.address) as proxy, _through(proxy, cluster) as backend:
        trial = backend.submit(fits.DigitsMLP, FunctionalEvaluator(fits.counting, steps=120, delay=0.02))
        seen: list[float] = []
        trial.add_report_callback(lambda _trial, value: seen.append(float(value)))  # type: ignore[arg-type]
        cutter = _cut_when(seen, 20, proxy, 0.5)
        assert trial.result(timeout=40) == 120.0
        cutter.join()
        assert seen == [float(i) for i in range(120)]  # none lost, none twice, in order


def test_a_lost_last_event_is_noticed_from_the_heartbeat(cluster: Backend) -> None:
    """The trial ends while the line is cut: no later event shows the gap, the heartbeat does."""
    with CuttableProxy(cluster.address) as proxy, _through(proxy, cluster) as backend:
        trial = backend.submit(fits.DigitsMLP, FunctionalEvaluator(fits.counting, steps=10, delay=0.04))
        seen: list[float] = []
        trial.add_report_callback(lambda _trial, value: seen.append(float(value)))  # type: ignore[arg-type]
        # the trial's last reports and its end fall in the cut, shorter than the client's patience
        # (a silent dispatcher makes it reconnect, which would replay the events anyway)
        cutter = _cut_when(seen, 3, proxy, 0.6 * HEARTBEAT_INTERVAL * LIVENESS)
        assert trial.result(timeout=30) == 10.0
        cutter.join()
        assert trial.state is TrialState.SUCCEEDED
        assert seen == [float(i) for i in range(10)]
