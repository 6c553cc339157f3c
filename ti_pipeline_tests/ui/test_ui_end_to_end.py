"""The Dagster UI end to end, as a data engineer meets it: `dagster dev` on loopback with the sample data,
headless Chromium materializes one VT day and one Sage shard from the launch dialog, the runs succeed,
and the warehouse rows and the export partition are there.

Needs Debian's ``chromium`` and ``chromium-driver`` (``apt-get install -y chromium chromium-driver``);
skipped without them unless ``CI`` is set. Screenshots of the asset graph and of a materialization's
metadata go to the test's tmp dir, or to ``$TI_UI_SCREENSHOTS`` (``TI_UI_SCREENSHOTS=docs/images`` refreshes
the README's pictures; by default a test run leaves the checkout untouched).
"""

import contextlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from ti_pipeline.core import schema, settings
from ti_pipeline.core.exports import SUCCESS_MARKER, partition_prefix

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
REPO = Path(__file__).resolve().parents[2]
VT_DAY = "2020-11-02"  # one of ti_pipeline.sample_data.vt.SAMPLE_DAYS
SHARD = "r01"
VIEWPORT = (1400, 900)
SERVER_START_TIMEOUT = 240  # `dagster dev` loads the code location twice; slow on a busy 2-core machine
UI_TIMEOUT = 120
RUN_TIMEOUT = 300

pytestmark = [pytest.mark.ui, pytest.mark.timeout(900)]

if not (CHROMIUM.exists() and CHROMEDRIVER.exists()) and not os.environ.get("CI"):
    pytest.skip(
        "needs /usr/bin/chromium and /usr/bin/chromedriver (apt-get install -y chromium chromium-driver)",
        allow_module_level=True,
    )

from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import (  # noqa: E402
    ElementClickInterceptedException,
    StaleElementReferenceException,
    TimeoutException,
)
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.remote.webelement import WebElement  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _text_is(text: str, within: str = "//body") -> str:
    """XPath: the innermost element under ``within`` whose whole text is ``text``."""
    return f"{within}//*[normalize-space()='{text}' and not(.//*[normalize-space()='{text}'])]"


def _png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", header[16:24])


class DagsterDev:
    """`dagster dev` in its own process group, with a fresh DAGSTER_HOME and TI_DATA_DIR."""

    def __init__(self, root: Path):
        self.home, self.data = root / "dagster_home", root / "ti_data"
        self.log = root / "dagster_dev.log"
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TI_", "DAGSTER_"))}
        env.update(TI_DATA_DIR=str(self.data), DAGSTER_HOME=str(self.home))
        return env

    def prepare(self) -> None:
        self.home.mkdir(parents=True)
        shutil.copy(REPO / "dagster.yaml", self.home / "dagster.yaml")
        cli = Path(sys.executable).with_name("ti-pipeline")
        subprocess.run(
            [str(cli), "sample-data", "--docs-per-shard", "100"],
            env=self.env(), check=True, capture_output=True, timeout=300,
        )

    def start(self) -> None:
        dagster = Path(sys.executable).with_name("dagster")
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [str(dagster), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(self.port)],
                cwd=REPO, env=self.env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"dagster dev exited ({self.process.returncode}), see {self.log}"
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{self.url}/server_info", timeout=5) as response:
                    if response.status == 200:
                        return
            time.sleep(1)
        raise AssertionError(f"dagster dev did not answer on {self.url} in {SERVER_START_TIMEOUT}s, see {self.log}")

    def stop(self) -> None:
        """SIGTERM to the whole group (webserver, daemon, code servers, runs), SIGKILL if it lingers."""
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def dagster_dev(tmp_path_factory) -> Iterator[DagsterDev]:
    dev = DagsterDev(tmp_path_factory.mktemp("ui"))
    dev.prepare()
    try:
        dev.start()
        yield dev
    finally:
        dev.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory) -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    profile = tmp_path_factory.mktemp("chromium_profile")
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}", f"--window-size={VIEWPORT[0]},{VIEWPORT[1]}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        # --window-size sizes the window; the page itself must be exactly the screenshot size.
        driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": VIEWPORT[0], "height": VIEWPORT[1], "deviceScaleFactor": 1, "mobile": False},
        )
        yield driver
    finally:
        driver.quit()


class UI:
    """The few gestures the test makes, by visible text and roles; any failure leaves a screenshot."""

    def __init__(self, driver: webdriver.Chrome, dev: DagsterDev, evidence: Path):
        self.driver, self.dev, self.evidence = driver, dev, evidence

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        try:
            yield
        except Exception as exc:
            self.evidence.mkdir(parents=True, exist_ok=True)
            shot, source = self.evidence / f"{name}.png", self.evidence / f"{name}.html"
            with contextlib.suppress(Exception):
                self.driver.save_screenshot(str(shot))
                source.write_text(self.driver.page_source)
            raise AssertionError(
                f"UI step {name!r} failed: {type(exc).__name__}: {getattr(exc, 'msg', None) or exc}; screenshot {shot}, page source {source}, "
                f"dagster dev log {self.dev.log}"
            ) from exc

    def wait(self, timeout: float = UI_TIMEOUT) -> WebDriverWait:
        return WebDriverWait(self.driver, timeout, poll_frequency=0.5)

    def open(self, path: str) -> None:
        self.driver.get(self.dev.url + path)

    def dismiss_community_dialog(self) -> None:
        """A fresh browser profile gets a 'Join the Dagster community' dialog a few seconds after the
        first page load, over whatever is open then; wait for it once and skip it."""
        self.open("/")
        try:
            self.wait(30).until(EC.element_to_be_clickable((By.XPATH, "//button[normalize-space()='Skip']"))).click()
        except TimeoutException:
            return  # this Dagster version does not ask
        self.wait(30).until(EC.invisibility_of_element_located((By.XPATH, "//button[normalize-space()='Skip']")))

    def dismiss_popups(self) -> None:
        for button in self.driver.find_elements(By.XPATH, "//button[normalize-space()='Skip']"):
            if button.is_displayed():
                button.click()

    def click(self, xpath: str, timeout: float = UI_TIMEOUT) -> None:
        """Click once the element is there and clickable; React re-renders replace elements, so retry."""

        def clicked(driver) -> bool:
            self.dismiss_popups()
            element = EC.element_to_be_clickable((By.XPATH, xpath))(driver)
            if not element:
                return False
            element.click()
            return True

        WebDriverWait(
            self.driver, timeout, poll_frequency=0.5,
            ignored_exceptions=(StaleElementReferenceException, ElementClickInterceptedException),
        ).until(clicked, f"no clickable {xpath}")

    def visible(self, xpath: str, timeout: float = UI_TIMEOUT) -> WebElement:
        return self.wait(timeout).until(EC.visibility_of_element_located((By.XPATH, xpath)), f"not visible: {xpath}")

    def materialize_partition(self, asset_path: str, partition: str) -> str:
        """Asset page → Materialize… → the one partition → Launch 1 run; returns the run id prefix."""
        self.open(f"/assets/{asset_path}")
        self.click("//button[starts-with(normalize-space(), 'Materialize')]")
        dialog = "//div[@role='dialog'][.//*[starts-with(normalize-space(), 'Launch runs to materialize')]]"
        self.visible(dialog)
        all_time = f"{dialog}//button[normalize-space()='All time']"
        time_range = f"{dialog}//button[normalize-space()='All time' or normalize-space()='Last 90 days']"
        static_select = f"{dialog}//*[normalize-space()='Select a partition or create one']"
        self.visible(f"{time_range} | {static_select}")
        if self.driver.find_elements(By.XPATH, time_range):
            # Time partitions: the range starts as the last 90 days (a banner offers the rest).
            if not self.driver.find_elements(By.XPATH, all_time):
                self.click(_text_is("Show all partitions", within=dialog))
            self.visible(all_time)
            field = self.visible(f"{dialog}//input[starts-with(@placeholder, 'ex:')]")
            field.click()
            field.send_keys(Keys.CONTROL, "a")
            field.send_keys(partition, Keys.ENTER)
        else:  # static partitions: a multi-select menu
            self.click(static_select)
            self.click(f"//*[@role='menuitem'][.//span[normalize-space()='{partition}']]")
            self.click(f"{dialog}//*[starts-with(normalize-space(), 'Launch runs to materialize')]")  # close menu
        self.visible(f"{dialog}//*[normalize-space()='1 partition']")
        self.click(f"{dialog}//button[normalize-space()='Launch 1 run']")
        toast = self.visible("//*[starts-with(normalize-space(), 'Launched run') and not(.//*[starts-with(normalize-space(), 'Launched run')])]")
        return toast.text.split()[-1]

    def graph_settings(self, item: str) -> None:
        """Choose ``item`` in the graph's settings menu (the gear below the zoom buttons)."""
        gear = "(//button[.//*[@aria-label='settings']])[last()]"
        entry = f"//*[@role='menuitem'][contains(normalize-space(), '{item}')]"

        def chosen(driver) -> bool:
            shown = [e for e in driver.find_elements(By.XPATH, entry) if e.is_displayed()]
            if shown:
                shown[0].click()
                return True
            driver.find_element(By.XPATH, gear).click()  # opens the menu (or closes a stale one)
            return False

        WebDriverWait(
            self.driver, UI_TIMEOUT, poll_frequency=2,
            ignored_exceptions=(StaleElementReferenceException, ElementClickInterceptedException),
        ).until(chosen, f"no menu entry {item!r}")
        self.wait(30).until(EC.invisibility_of_element_located((By.XPATH, entry)), f"menu still open: {entry}")

    def screenshot_materialization(self, asset_path: str, partition: str, path: Path) -> None:
        """The partition's latest materialization with its accounting table in view."""
        self.open(f"/assets/{asset_path}?view=partitions&partition={partition}")
        accounting = self.visible("//td[normalize-space()='accounting']")
        self.visible("//*[normalize-space()='unaccounted']")
        self.driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", accounting)
        time.sleep(1)  # let the scroll settle before the picture
        self.driver.save_screenshot(str(path))

    def screenshot_asset_graph(self, path: Path) -> None:
        """Global asset lineage, every group expanded, laid out top to bottom to fit the viewport."""
        self.open("/asset-groups")
        self.visible(_text_is("Global asset lineage"))
        self.graph_settings("Expand all groups")
        self.graph_settings("vertical orientation")
        # Both choices are kept (URL, local storage); a reload lays the graph out to fit the view.
        self.driver.refresh()
        self.visible(_text_is("vt_file_reports"))  # a node shows the last part of its key
        time.sleep(2)  # the graph animates to its new layout
        self.driver.save_screenshot(str(path))


def _wait_for_run(instance, run_id_prefix: str):
    from dagster import DagsterRunStatus

    deadline = time.monotonic() + RUN_TIMEOUT
    while time.monotonic() < deadline:
        runs = [run for run in instance.get_runs() if run.run_id.startswith(run_id_prefix)]
        if runs and runs[0].is_finished:
            return runs[0]
        time.sleep(1)
    status = runs[0].status if runs else "not found"
    raise AssertionError(f"run {run_id_prefix} not finished after {RUN_TIMEOUT}s ({status}); expected {DagsterRunStatus.SUCCESS}")


def test_materialize_vt_day_and_sage_shard_from_the_ui(dagster_dev: DagsterDev, browser, tmp_path: Path):
    from dagster import AssetKey, DagsterInstance, DagsterRunStatus

    ui = UI(browser, dagster_dev, tmp_path / "ui_failure")
    screenshots = Path(settings.text("TI_UI_SCREENSHOTS") or tmp_path / "screenshots")
    if not screenshots.is_absolute():
        screenshots = REPO / screenshots
    screenshots.mkdir(parents=True, exist_ok=True)

    with ui.step("first_visit"):
        ui.dismiss_community_dialog()
    with ui.step("launch_vt_feed_vt_file_reports"):
        vt_run_prefix = ui.materialize_partition("vt_feed/vt_file_reports", VT_DAY)
    with ui.step("launch_sage_dump_ioc_file_hashes"):
        sage_run_prefix = ui.materialize_partition("sage_dump/ioc_file_hashes", SHARD)

    instance = DagsterInstance.from_config(str(dagster_dev.home))
    try:
        runs = {name: _wait_for_run(instance, prefix) for name, prefix in (("vt", vt_run_prefix), ("sage", sage_run_prefix))}
        for name, run in runs.items():
            assert run.status == DagsterRunStatus.SUCCESS, f"{name} run {run.run_id}: {run.status}, see {dagster_dev.log}"
        assert runs["vt"].tags["dagster/partition"] == VT_DAY
        assert runs["sage"].tags["dagster/partition"] == SHARD
        sage_event = instance.get_latest_materialization_event(AssetKey(["sage_dump", "ioc_file_hashes"]))
        vt_event = instance.get_latest_materialization_event(AssetKey(["vt_feed", "vt_file_reports"]))
    finally:
        instance.dispose()

    for name, run in runs.items():
        with ui.step(f"run_page_{name}"):
            ui.open(f"/runs/{run.run_id}")
            ui.visible(_text_is("Success"))
            ui.visible(f"//*[starts-with(normalize-space(), 'partition:') and contains(normalize-space(), '{run.tags['dagster/partition']}')]")

    # The Sage shard's rows, exactly as many as its materialization says it wrote.
    sage_meta = sage_event.asset_materialization.metadata
    assert sage_event.asset_materialization.partition == SHARD
    assert sage_meta["unaccounted"].value == 0
    engine = sa.create_engine(f"sqlite:///{dagster_dev.data / 'warehouse.sqlite'}")
    try:
        with engine.connect() as conn:
            sage_rows = conn.execute(
                sa.select(sa.func.count()).select_from(schema.ioc_file_hashes)
                .where(schema.ioc_file_hashes.c.source == "SAGE_DUMP")
            ).scalar_one()
    finally:
        engine.dispose()
    assert sage_rows > 0
    assert sage_rows == sage_meta["written"].value

    # The VT day's export partition: complete (_SUCCESS last), its parts hold the rows the manifest says.
    assert vt_event.asset_materialization.partition == VT_DAY
    export_root = dagster_dev.data / "export"
    manifest = json.loads((export_root / partition_prefix("vt_file_reports", VT_DAY) / SUCCESS_MARKER).read_text())
    assert manifest["rows"] > 0
    assert manifest["parts"]
    for part in manifest["parts"]:  # part names are object names under the export root
        assert part["name"].startswith(partition_prefix("vt_file_reports", VT_DAY) + "/part-")
        assert pq.read_metadata(export_root / part["name"]).num_rows == part["rows"]
    assert sum(part["rows"] for part in manifest["parts"]) == manifest["rows"]
    assert vt_event.asset_materialization.metadata["written"].value == manifest["rows"]

    # Screenshots for the README: a materialization's accounting, and the whole asset graph.
    with ui.step("screenshot_materialization"):
        ui.screenshot_materialization("sage_dump/ioc_file_hashes", SHARD, screenshots / "materialization_metadata.png")
    with ui.step("screenshot_asset_graph"):
        ui.screenshot_asset_graph(screenshots / "asset_graph.png")
    for name in ("materialization_metadata.png", "asset_graph.png"):
        assert _png_size(screenshots / name) == VIEWPORT
