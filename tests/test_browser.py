"""The product as a user meets it: `dagster dev` (webserver + daemon) and `mlflow ui`, in a real browser.

One test walks the README's three uses in order: look at the asset graph, materialize `prompt_pool` from its
page and watch the run succeed; save a new constitution file in the watched folder and watch it flow by
itself, with nothing clicked, to the comparison (`constitution_sensor` judges the new version, the automation
sensor builds the blend's dataset, trains, evaluates and refreshes `comparison`; quick profile, a two-
principle constitution, one blend); open the MLflow runs the Dagster runs logged. Screenshots land in the
test's tmp dir, and also in the folder named by ALIGNMENT_SCREENSHOTS_DIR when set
(`ALIGNMENT_SCREENSHOTS_DIR=docs/screenshots` refreshes the README's).

Chromium is Debian's (`make browser` installs it; `playwright install` is not used). Selectors are roles and
visible text of dagster-webserver 1.13 and MLflow 3.x; waits are on conditions, with generous timeouts
because this runs on a loaded 2-core machine.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from dagster import AssetKey, AssetRecordsFilter, DagsterInstance, DagsterRunStatus, RunsFilter
from dagster._core.instance.ref import InstanceRef
from mlflow import MlflowClient

from alignment_dagster.cli.stores import ensure_root
from alignment_dagster.core.settings import Settings
from alignment_dagster.specs.constitution import load_constitution
from tests.conftest import REPO, SHARED_DATA
from tests.label_studio_fixture import free_port, tail

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
SERVER_TIMEOUT = 240  # seconds for `dagster dev` / `mlflow ui` to answer on a loaded machine
RUN_TIMEOUT = 300  # seconds for a run to get where the test waits for it
LOOP_TIMEOUT = 1200  # seconds for a constitution to flow from its file to the comparison (quick profile)
BLEND = "hh-baseline"  # the one blend the stack watches: trains on imported human labels, no gate needed
# Two principles, so the sensor's run judges a small version quickly.
TINY = """\
name: tiny
principles:
  - id: harmless
    text: Choose the response that is less harmful.
  - id: helpful
    text: Choose the response that is more helpful.
"""
UI_TIMEOUT_MS = 90_000  # default Playwright wait for an element
VIEWPORT = {"width": 1440, "height": 900}
TERMINAL = {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium (or the binary ALIGNMENT_CHROMIUM names); failing, not skipping, when missing."""
    named = os.environ.get("ALIGNMENT_CHROMIUM")
    if named:
        if not Path(named).is_file():
            pytest.fail(f"ALIGNMENT_CHROMIUM={named} is not a file", pytrace=False)
        return named
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.fail(
            "chromium not found on PATH: run `make browser` (apt-get install -y chromium) or set "
            "ALIGNMENT_CHROMIUM to a Chromium binary; the browser test is part of `make test` and is never "
            "skipped",
            pytrace=False,
        )
    return found


def wait_for(predicate: Callable[[], object], timeout: float, what: str, log: Path | None = None) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(1.0)
    raise AssertionError(
        f"timed out after {timeout:.0f}s waiting for {what}" + (f"\n{tail(log, 60)}" if log else "")
    )


@dataclass
class Server:
    """A server process started in its own process group, so teardown reaches every child (runs included)."""

    name: str
    proc: subprocess.Popen
    url: str
    log: Path

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, grace: float = 45.0) -> None:
        pgid = self.proc.pid  # start_new_session: the leader's pid is the group id
        try:
            os.killpg(pgid, signal.SIGINT)  # `dagster dev` shuts its webserver, daemon and code servers down
        except ProcessLookupError:
            return
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(pgid, signal.SIGKILL)  # whatever did not stop in time (and orphans of the group)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)


def start(name: str, argv: list[str], env: dict[str, str], log: Path, url: str, ready_path: str) -> Server:
    handle = open(log, "wb")
    proc = subprocess.Popen(
        argv,
        cwd=REPO,
        env=env,
        stdout=handle,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        # A shell that starts pytest in the background ignores SIGINT, and children inherit that;
        # `dagster dev` needs SIGINT (it maps SIGTERM to the same handler) to shut down cleanly.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    handle.close()
    server = Server(name, proc, url, log)

    def ready() -> bool:
        if not server.alive():
            raise AssertionError(f"{name} exited with {proc.returncode}:\n{tail(log, 60)}")
        try:
            return httpx.get(url + ready_path, timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(ready, SERVER_TIMEOUT, f"{name} at {url}", log)
    except BaseException:
        server.stop(grace=10)
        raise
    return server


@dataclass
class Stack:
    dagster: Server
    instance: DagsterInstance
    root: Path
    constitutions: Path
    env: dict[str, str]
    mlflow_port: int


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    """`dagster dev` on free loopback ports against a temporary instance, storage root and watched folders."""
    root, blends = tmp_path / "root", tmp_path / "blends"
    home, constitutions = root / "dagster_home", root / "constitutions"  # as `make dev` lays them out
    blends.mkdir()
    shutil.copy(REPO / "blends" / f"{BLEND}.yaml", blends)
    ensure_root(root, Settings.from_env({"ALIGNMENT_ROOT": str(root)}))  # the run queue `make dev` uses
    (root / "constitutions" / "constitutional-ai.yaml").unlink()  # the only constitution is the test's
    with open(home / "dagster.yaml", "a") as config:
        config.write("nux:\n  enabled: false\n")
    port, mlflow_port = free_port(), free_port()
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "ALIGNMENT_ROOT": str(root),
        "ALIGNMENT_CONSTITUTIONS_DIR": str(constitutions),
        "ALIGNMENT_BLENDS_DIR": str(blends),
        "ALIGNMENT_IMPORT_PAIRS": str(SHARED_DATA),
        "ALIGNMENT_PROFILE": "quick",
        "ALIGNMENT_MLFLOW_UI_URL": f"http://127.0.0.1:{mlflow_port}",
        "OMP_NUM_THREADS": "1",
    }
    env.pop("ALIGNMENT_CONSTITUTIONS_S3", None)
    dagster = start(
        "dagster dev",
        [str(BIN / "dagster"), "dev", "-h", "127.0.0.1", "-p", str(port), "-w", str(REPO / "workspace.yaml")],
        env,
        tmp_path / "dagster-dev.log",
        f"http://127.0.0.1:{port}",
        "/server_info",
    )
    instance = DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))
    try:
        yield Stack(dagster, instance, root, constitutions, env, mlflow_port)
    finally:
        dagster.stop()
        leftover = [r.run_id for r in instance.get_runs() if r.status not in TERMINAL]
        instance.dispose()
        # Killing the process group ends any run still going; the instance is temporary, so a run left
        # marked STARTED there harms nothing, but say so in the log.
        if leftover:
            print(f"runs not terminal at teardown (their processes were killed with the group): {leftover}")


@pytest.fixture
def screenshots(tmp_path: Path) -> Iterator[Callable]:
    """`shot(page, name)`: a PNG under the test's tmp dir and, when asked for, ALIGNMENT_SCREENSHOTS_DIR."""
    out = tmp_path / "screenshots"
    out.mkdir()
    extra = os.environ.get("ALIGNMENT_SCREENSHOTS_DIR")
    taken: list[Path] = []

    def shot(page, name: str) -> Path:
        path = out / f"{name}.png"
        page.screenshot(path=str(path))
        taken.append(path)
        return path

    yield shot
    if extra:
        dest = Path(extra) if Path(extra).is_absolute() else REPO / extra
        dest.mkdir(parents=True, exist_ok=True)
        for path in taken:
            if path.stem != "failure":
                shutil.copy2(path, dest / path.name)
    print(f"screenshots: {out}" + (f" (copied to {extra})" if extra else ""))


def open_browser(playwright, chromium: str):
    browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
    page = browser.new_page(viewport=VIEWPORT)
    page.set_default_timeout(UI_TIMEOUT_MS)
    # The "Join the Dagster community" dialog is off in this instance's dagster.yaml; dismiss it if it shows.
    page.add_locator_handler(
        page.get_by_text("Join the Dagster community"),
        lambda: page.get_by_role("button", name="Skip").click(),
    )
    return browser, page


def runs_of(instance: DagsterInstance, **tags: str):
    return instance.get_runs(RunsFilter(tags=tags) if tags else None)


@pytest.mark.timeout(2400)
def test_ui_materialize_sensor_run_and_mlflow(chromium: str, stack: Stack, screenshots: Callable) -> None:
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=UI_TIMEOUT_MS)

    base, instance, log = stack.dagster.url, stack.instance, stack.dagster.log
    versions = httpx.get(base + "/server_info", timeout=10).json()
    assert versions["dagster_webserver_version"].startswith("1.13."), (
        versions
    )  # the selectors below are 1.13's

    with sync_playwright() as pw:
        browser, page = open_browser(pw, chromium)
        try:
            # 1. The asset graph, every group expanded.
            page.goto(base + "/asset-groups")
            expect(page.get_by_role("button", name="Materialize all")).to_be_visible()
            page.locator("button").filter(
                has=page.get_by_role("img", name="settings", exact=True)
            ).last.click()
            page.get_by_role("menuitem", name="Expand all groups").click()
            page.keyboard.press("Escape")
            # The whole graph no longer fits the window: the assets in its middle, which it is centred on.
            for asset in ("response_pairs", "constitution", "ai_preferences", "human_labels"):
                expect(page.get_by_text(asset, exact=True).first).to_be_visible()
            screenshots(page, "01-asset-graph")

            # 2. Open prompt_pool's page and materialize it; follow the toast to the run.
            page.goto(base + "/assets/prompt_pool")
            # Its accessible name carries the icon's ("materialization Materialize").
            page.get_by_role("button", name=re.compile(r"^(materialization )?Materialize$")).first.click()
            toast = page.get_by_text(re.compile(r"Launched run [0-9a-f]{8}"))
            expect(toast).to_be_visible()
            short_id = re.search(r"[0-9a-f]{8}", toast.inner_text()).group(0)
            run = wait_for(
                lambda: [r for r in runs_of(instance) if r.run_id.startswith(short_id)],
                60,
                f"run {short_id} in the instance",
                log,
            )[0]
            # The toast's "View" link goes here too, but the toast may be gone before a loaded machine clicks.
            page.goto(f"{base}/runs/{run.run_id}")

            def finished():
                status = instance.get_run_by_id(run.run_id).status
                assert status not in (DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED), (
                    f"prompt_pool run {status}:\n{tail(log, 80)}"
                )
                return status == DagsterRunStatus.SUCCESS

            wait_for(finished, RUN_TIMEOUT, f"run {short_id} to succeed", log)
            expect(page.get_by_text("Success", exact=True).first).to_be_visible()
            expect(page.get_by_text("RUN_SUCCESS").first).to_be_visible()
            screenshots(page, "02-prompt-pool-run")
            assert run.tags.get("dagster/from_ui") == "true"
            assert {k.to_user_string() for k in instance.get_run_by_id(run.run_id).asset_selection} == {
                "prompt_pool"
            }
            assert instance.get_latest_materialization_event(AssetKey("prompt_pool")) is not None
            assert (stack.root / "prompt_pool" / "data.parquet").is_file()

            # 3. A new constitution file in the watched folder: the daemon's sensor adds a partition and a
            # run.
            path = stack.constitutions / "tiny.yaml"
            path.write_text(TINY)
            key = load_constitution(path).partition_key
            sensor_run = wait_for(
                lambda: runs_of(instance, **{"dagster/partition": key}),
                RUN_TIMEOUT,
                f"a run for partition {key}",
                log,
            )[0]
            assert sensor_run.tags["dagster/sensor_name"] == "constitution_sensor"
            assert sensor_run.job_name == "constitution_pipeline"
            assert instance.has_dynamic_partition("constitution", key)
            sensor_id = sensor_run.run_id[:8]

            page.goto(base + "/runs")
            expect(page.get_by_role("link", name=sensor_id)).to_be_visible()
            expect(page.get_by_text(f"partition: {key}").first).to_be_visible()
            expect(page.get_by_text("constitution_sensor").first).to_be_visible()
            screenshots(page, "03-sensor-run-in-runs")

            page.goto(base + "/automation")
            page.get_by_role("link", name="constitution_sensor").first.click()
            expect(page.get_by_text("1 run requested").first).to_be_visible()
            expect(page.get_by_text("Running", exact=True).first).to_be_visible()
            expect(page.get_by_text("Loading ticks")).to_have_count(0)
            expect(page.get_by_text(sensor_id).first).to_be_visible()  # the tick's result names the run
            screenshots(page, "04-constitution-sensor")

            # The sensor's run judges the new version; the automation sensor then builds the blend's
            # preference_dataset, trains, evaluates and refreshes the comparison, with nothing clicked.
            def succeeded(run_id: str, what: str):
                status = instance.get_run_by_id(run_id).status
                assert status not in (DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED), (
                    f"{what} {status}:\n{tail(log, 80)}"
                )
                return status == DagsterRunStatus.SUCCESS

            wait_for(
                lambda: succeeded(sensor_run.run_id, "sensor run"), LOOP_TIMEOUT, f"run {sensor_id}", log
            )
            assert (stack.root / "constitution" / key / "data.json").is_file()
            page.goto(f"{base}/runs/{sensor_run.run_id}")
            expect(page.get_by_text(f"partition: {key}").first).to_be_visible()
            expect(page.get_by_text("Launched by constitution_sensor").first).to_be_visible()
            expect(page.get_by_text("RUN_SUCCESS").first).to_be_visible()
            screenshots(page, "05-sensor-run")
            # The sensor's cursor holds the file: the next ticks start nothing more.
            assert len(runs_of(instance, **{"dagster/sensor_name": "constitution_sensor"})) == 1

            partition = f"{BLEND}|{key}"

            def compared():
                for run in runs_of(instance, **{"dagster/sensor_name": "alignment_automation"}):
                    succeeded(run.run_id, f"automated run {run.run_id[:8]}")
                evals = instance.fetch_materializations(
                    AssetRecordsFilter(asset_key=AssetKey("evals"), asset_partitions=[partition]), limit=1
                ).records
                latest = instance.fetch_materializations(AssetKey("comparison"), limit=1).records
                # Phase 1's sft_evals refreshes the comparison too: wait for one after the blend's evals.
                return evals and latest and latest[0].timestamp >= evals[0].timestamp

            wait_for(compared, LOOP_TIMEOUT, "the automation to refresh the comparison after evals", log)
            automated = runs_of(instance, **{"dagster/sensor_name": "alignment_automation"})
            selected = {k.to_user_string() for r in automated for k in (r.asset_selection or ())}
            assert {"preference_dataset", "reward_model", "dpo_policy", "evals", "comparison"} <= selected
            page.goto(f"{base}/assets/comparison")
            expect(page.get_by_text("alignment_automation").first).to_be_visible()
            expect(page.get_by_text(key).first).to_be_visible()  # the new version's row in the table
            screenshots(page, "06-comparison")
            # reward_model's Automation tab: the automation's evaluations, one of which requested its run.
            page.goto(f"{base}/assets/reward_model?view=automation")
            expect(page.get_by_role("tab", name="Automation", selected=True)).to_be_visible()
            expect(page.get_by_text("1 requested").first).to_be_visible()
            screenshots(page, "07-reward-model-automation")

            # 4. MLflow: one parent run per Dagster run, children per materialization.
            mlflow = start(
                "mlflow ui",
                [
                    str(BIN / "mlflow"),
                    "ui",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(stack.mlflow_port),
                    "--backend-store-uri",
                    f"sqlite:///{stack.root / 'mlflow.db'}",
                ],
                stack.env,
                log.parent / "mlflow-ui.log",
                f"http://127.0.0.1:{stack.mlflow_port}",
                "/health",
            )
            try:
                client = MlflowClient(f"sqlite:///{stack.root / 'mlflow.db'}")
                experiment = client.get_experiment_by_name("alignment-dagster")
                parents = {
                    r.info.run_name: r
                    for r in client.search_runs(
                        [experiment.experiment_id], "tags.`alignment.level` = 'dagster-run'"
                    )
                }
                assert {f"__ASSET_JOB-{short_id}", f"constitution_pipeline-{sensor_id}"} <= set(parents)
                page.goto(
                    f"{mlflow.url}/#/experiments/{experiment.experiment_id}/runs?workflowType=machine_learning"
                )
                for name in (f"__ASSET_JOB-{short_id}", f"constitution_pipeline-{sensor_id}"):
                    expect(page.get_by_text(name).first).to_be_visible()
                assistant = page.get_by_role("button", name="Close", exact=True)  # MLflow 3's assistant panel
                if assistant.count():
                    assistant.first.click()
                # Expand each Dagster run to its materializations (the button left of the run name).
                expanders = page.locator("[role=gridcell][col-id*='Run Name'] button")
                for i in range(expanders.count()):
                    expanders.nth(i).click()
                for name in ("prompt_pool", f"constitution[{key}]"):
                    expect(page.get_by_text(name, exact=True).first).to_be_visible()
                screenshots(page, "08-mlflow-runs")
            finally:
                mlflow.stop(grace=20)
        except BaseException:
            try:
                screenshots(page, "failure")  # what the page showed when the test gave up
            except Exception as err:  # a dead page must not hide the real failure
                print(f"no failure screenshot: {err}")
            raise
        finally:
            browser.close()
