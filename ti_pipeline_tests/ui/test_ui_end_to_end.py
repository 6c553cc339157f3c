"""The Dagster UI end to end, as a data engineer meets it: `dagster dev` on loopback with the sample data (and
its daemon, so backfills run). Headless Chromium materializes one Sage shard from the launch dialog, and
launches the documented VT history backfill (docs/runbook.md, "History backfill") from the vt_feed group's
graph: the three VT assets selected, "Materialize selected", the three sample days, "Launch backfill".

2020-11-02 has one cut package of four, so its blocking check packages_corrupt fails: that day is exported
but not materialized, its Broccoli and load never start, and the backfill ends failed for it while the
other two days are materialized and loaded. The test checks that on the instance (runs, materializations,
check evaluations), through GraphQL (the backfill's counts), in the warehouse and the exports, and in the
browser (the backfill page, the partitions views of vt_file_reports and ioc_file_hashes).

Needs Debian's ``chromium`` and ``chromium-driver`` (``apt-get install -y chromium chromium-driver``);
skipped without them unless ``CI`` is set. Screenshots (the vt_feed group's graph, the partitions views,
a materialization's metadata) go to the test's tmp dir, or to ``$TI_UI_SCREENSHOTS``
(``TI_UI_SCREENSHOTS=docs/images`` refreshes the README's pictures; by default a test run leaves the
checkout untouched).
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
from urllib.parse import quote
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
LOCATION = "ti_pipeline"  # workspace.yaml's location_name
# ti_pipeline.sample_data.vt.SAMPLE_DAYS: on BLOCKED one package of four is cut (packages_corrupt fails).
VT_DAYS = ("2020-11-01", "2020-11-02", "2020-11-03")
BLOCKED = "2020-11-02"
LOADED = ("2020-11-01", "2020-11-03")
VT_GROUP = "vt_feed"
VT_ASSETS = ("vt_file_reports", "broccoli_classifications", "ioc_file_hashes")  # the history backfill's three
SHARD = "r01"
VIEWPORT = (1400, 900)
SERVER_START_TIMEOUT = 240  # `dagster dev` loads the code location twice; slow on a busy 2-core machine
UI_TIMEOUT = 120
RUN_TIMEOUT = 300
# The backfill daemon ticks every 30 s: export run, then Broccoli, then load runs, then "done" (~4 min here).
BACKFILL_TIMEOUT = 600
BACKFILL_DONE = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}

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
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
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

    def choose_time_partitions(self, dialog: str, text: str) -> None:
        """In a launch dialog of daily partitions: all time (it opens on the last 90 days), then ``text``
        (a day, ``a, b`` or ``[first...last]``) typed into the partition field."""
        all_time = f"{dialog}//button[normalize-space()='All time']"
        if not self.driver.find_elements(By.XPATH, all_time):
            self.click(_text_is("Show all partitions", within=dialog))
        self.visible(all_time)
        field = self.visible(f"{dialog}//input[starts-with(@placeholder, 'ex:')]")
        field.click()
        field.send_keys(Keys.CONTROL, "a")
        field.send_keys(text, Keys.ENTER)

    def materialize_partition(self, asset_path: str, partition: str) -> str:
        """Asset page → Materialize… → the one partition → Launch 1 run; returns the run id prefix."""
        self.open(f"/assets/{asset_path}")
        self.click("//button[starts-with(normalize-space(), 'Materialize')]")
        dialog = LAUNCH_DIALOG
        self.visible(dialog)
        time_range = f"{dialog}//button[normalize-space()='All time' or normalize-space()='Last 90 days']"
        static_select = f"{dialog}//*[normalize-space()='Select a partition or create one']"
        self.visible(f"{time_range} | {static_select}")
        if self.driver.find_elements(By.XPATH, time_range):
            self.choose_time_partitions(dialog, partition)
        else:  # static partitions: a multi-select menu
            self.click(static_select)
            self.click(f"//*[@role='menuitem'][.//span[normalize-space()='{partition}']]")
            self.click(f"{dialog}//*[starts-with(normalize-space(), 'Launch runs to materialize')]")  # close menu
        self.visible(f"{dialog}//*[normalize-space()='1 partition']")
        self.click(f"{dialog}//button[normalize-space()='Launch 1 run']")
        toast = self.visible("//*[starts-with(normalize-space(), 'Launched run') and not(.//*[starts-with(normalize-space(), 'Launched run')])]")
        return toast.text.split()[-1]

    def open_group_graph(self, group: str) -> None:
        self.open(f"/locations/{LOCATION}/asset-groups/{group}/lineage")

    def select_in_group_graph(self, group: str, names: tuple[str, ...]) -> None:
        """The group's graph, its asset list (the panel left of the graph) opened, the first asset clicked
        and each other one shift-clicked: "Materialize selected (N)…" then targets exactly those."""
        self.open_group_graph(group)
        self.visible(_text_is(names[0]))  # the graph's node (its label: the last part of the key)
        in_list = "//span[normalize-space()='{}']"  # a row of the asset list (a node's label is a div)
        if not [e for e in self.driver.find_elements(By.XPATH, in_list.format(names[0])) if e.is_displayed()]:
            self.click("//button[.//*[@aria-label='panel_show_left']]")
        for index, name in enumerate(names):
            def selected(driver, name=name, shift=index > 0) -> bool:
                self.dismiss_popups()
                row = EC.element_to_be_clickable((By.XPATH, in_list.format(name)))(driver)
                if not row:
                    return False
                if shift:
                    ActionChains(driver).key_down(Keys.SHIFT).click(row).key_up(Keys.SHIFT).perform()
                else:
                    row.click()
                return True

            WebDriverWait(
                self.driver, UI_TIMEOUT, poll_frequency=0.5,
                ignored_exceptions=(StaleElementReferenceException, ElementClickInterceptedException),
            ).until(selected, f"no asset {name!r} in the list of group {group}")
            token = quote(f"{group}/{name}", safe="")  # the selection is kept in the URL's path
            self.wait().until(lambda driver, token=token: token in driver.current_url, f"{name} not selected")
        self.visible(f"//button[starts-with(normalize-space(), 'Materialize selected ({len(names)})')]")

    def launch_backfill_of_selection(self, count: int, partitions: str, expected: int) -> str:
        """"Materialize selected (N)…" → the partitions → "Launch backfill"; returns the backfill's id."""
        self.click(f"//button[starts-with(normalize-space(), 'Materialize selected ({count})')]")
        dialog = LAUNCH_DIALOG
        self.visible(f"{dialog}//*[normalize-space()='Launch runs to materialize {count} assets']")
        self.choose_time_partitions(dialog, partitions)
        self.visible(f"{dialog}//*[normalize-space()='{expected} partitions']")
        self.click(f"{dialog}//button[normalize-space()='Launch backfill']")
        toast = self.visible("//*[starts-with(normalize-space(), 'Created backfill') and not(.//*[starts-with(normalize-space(), 'Created backfill')])]")
        return toast.text.split()[-1]

    def open_partitions(self, asset_path: str, days: tuple[str, ...], status: str | None = None,
                        partition: str | None = None) -> None:
        """The asset's Partitions tab over ``days`` (a range), optionally only partitions in ``status``
        (FAILED, MATERIALIZED, MISSING) or with ``partition`` selected; waits for the status counts."""
        query = f"view=partitions&default_range=[{days[0]}...{days[-1]}]"
        query += f"&status={status}" if status else ""
        query += f"&partition={partition}" if partition else ""
        self.open(f"/assets/{asset_path}?{query}")
        self.visible(f"//*[contains(normalize-space(), '{len(days) if status is None else ''}') and "
                     "substring(normalize-space(), string-length(normalize-space()) - 18) = 'Partitions Selected']")
        self.visible("//label[starts-with(normalize-space(), 'Missing (')]")

    def partition_counts(self) -> dict[str, int]:
        """The Partitions tab's counts by status, e.g. {'Failed': 1, 'Materialized': 2, ...}."""
        counts = {}
        for label in self.driver.find_elements(By.XPATH, "//label[contains(normalize-space(), ' (')]"):
            name, _, number = label.text.strip().rpartition(" (")
            if name in ("Failed", "Materialized", "Materializing", "Missing"):
                counts[name] = int(number.rstrip(")").replace(",", ""))
        return counts

    def listed_partitions(self) -> list[str]:
        """The partition keys of the Partitions tab's list (each row's key is its tooltip); call with no
        partition selected (the selected one's heading has the same tooltip)."""
        return self.driver.execute_script(
            "return [...document.querySelectorAll('div[data-tooltip]')].map(e => e.dataset.tooltip)"
            ".filter(t => /^\\d{4}-\\d{2}-\\d{2}$/.test(t))"
        )

    def screenshot_materialization(self, asset_path: str, partition: str, path: Path) -> None:
        """The partition's latest materialization with its accounting table in view."""
        self.open(f"/assets/{asset_path}?view=partitions&partition={partition}")
        accounting = self.visible("//td[normalize-space()='accounting']")
        self.visible("//*[normalize-space()='unaccounted']")
        self.driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", accounting)
        time.sleep(1)  # let the scroll settle before the picture
        self.driver.save_screenshot(str(path))

    def screenshot_group_graph(self, group: str, reason: str, path: Path) -> None:
        """The group's graph at its own zoom (the nodes' rows legible), once the nodes show their
        latest state: ``reason`` is text a node shows only then (e.g. its failed partitions)."""
        self.open_group_graph(group)
        self.visible(f"//*[contains(normalize-space(), '{reason}') and not(.//*[contains(normalize-space(), '{reason}')])]")
        self.wait(30).until(
            lambda driver: not [e for e in driver.find_elements(By.XPATH, "//*[normalize-space()='Latest event']/following-sibling::*[1]")
                                if not e.text.strip()],
            "a node's latest event is still loading",
        )
        time.sleep(2)  # the graph animates to its layout
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
