"""The README's dashboard screenshot, from a real run: a small search of the demo's space on two local
CPU workers (or ``--experiment DIR``, one you ran), served by ``retia dashboard`` and captured by the
distribution's headless Chromium, as the dashboard's browser tests drive it.

    .venv/bin/python examples/dashboard_screenshot.py [--trials 12] [--out docs/dashboard.png]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from digits_nas import DigitsSpace, classification

from retia import Experiment
from retia.client.dashboard import DashboardServer, ExperimentSource, create_app
from retia.strategy import RegularizedEvolution

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def run_search(path: Path, trials: int) -> None:
    """The demo's space and evaluator (one epoch), regularized evolution, on a private local cluster."""
    strategy = RegularizedEvolution(population_size=4, sample_size=2, seed=0)
    Experiment(DigitsSpace(), classification(1), strategy, path=path, seed=0).run(
        max_trials=trials, concurrency=2, live=False
    )


def capture(url: str, out: Path, width: int, height: int) -> None:
    """The trials page once its table and plots are drawn."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--enable-unsafe-swiftshader"):
        options.add_argument(arg)
    options.add_argument(f"--window-size={width},{height}")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.get(url + "trials")
        deadline = time.monotonic() + 60
        while not (
            driver.find_elements(By.CSS_SELECTOR, "#rows tr")
            and driver.find_elements(By.CSS_SELECTOR, "#metric-plot .main-svg")
            and driver.find_elements(By.CSS_SELECTOR, "#parallel-plot .parcoords")
        ):
            if time.monotonic() > deadline:
                raise SystemExit("the trials page did not draw its table and plots within 60 s")
            time.sleep(0.2)
        time.sleep(1.0)  # plotly's transitions
        out.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(out))
    finally:
        driver.quit()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--experiment", type=Path, help="an experiment directory (default: run a small search)"
    )
    parser.add_argument(
        "--trials", type=int, default=12, help="trials of the small search (default %(default)s)"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("docs/dashboard.png"), help="the PNG (default %(default)s)"
    )
    parser.add_argument("--size", default="1400x1000", help="the window, WIDTHxHEIGHT (default %(default)s)")
    args = parser.parse_args()
    width, height = (int(n) for n in args.size.split("x"))
    with tempfile.TemporaryDirectory(prefix="retia-screenshot-") as tmp:
        path = args.experiment
        if path is None:
            path = Path(tmp) / "experiment"
            run_search(path, args.trials)
        with DashboardServer(create_app(ExperimentSource(path)), "127.0.0.1", 0) as server:
            capture(server.url, args.out, width, height)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
