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
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

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

LAUNCH_DIALOG = "//div[@role='dialog'][.//*[starts-with(normalize-space(), 'Launch runs to materialize')]]"

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
                        partition: str | None = None) -> int:
        """The asset's Partitions tab over the range of ``days``, optionally listing only the partitions in
        ``status`` (FAILED, MATERIALIZED, MISSING), or with ``partition`` selected; returns the number of
        partitions listed ("N Partitions Selected") once the counts by status are shown."""
        query = f"view=partitions&default_range=[{days[0]}...{days[-1]}]"
        query += f"&status={status}" if status else ""
        query += f"&partition={partition}" if partition else ""
        self.open(f"/assets/{asset_path}?{query}")
        self.visible("//label[starts-with(normalize-space(), 'Missing (')]")
        selected = self.visible(
            "//*[contains(normalize-space(), 'Partitions Selected') and not(.//*[contains(normalize-space(), 'Partitions Selected')])]"
        )
        return int(selected.text.split()[0].replace(",", ""))

    def partition_counts(self) -> dict[str, int]:
        """The Partitions tab's counts by status, e.g. {'Failed': 1, 'Materialized': 2, ...}."""
        counts = {}
        for label in self.driver.find_elements(By.XPATH, "//label[contains(normalize-space(), ' (')]"):
            name, _, number = label.text.strip().rpartition(" (")
            if name in ("Failed", "Materialized", "Materializing", "Missing"):
                counts[name] = int(number.rstrip(")").replace(",", ""))
        return counts

    def listed_partitions(self, expected: list[str]) -> list[str]:
        """The partition keys of the Partitions tab's list once they are ``expected`` (each row's key is its
        tooltip); call with no partition selected (the selected one's heading has the same tooltip)."""
        script = (
            "return [...document.querySelectorAll('div[data-tooltip]')].map(e => e.dataset.tooltip)"
            ".filter(t => /^\\d{4}-\\d{2}-\\d{2}$/.test(t))"
        )
        listed: list[str] = []

        def shown(driver) -> bool:
            listed[:] = driver.execute_script(script)
            return listed == expected

        try:
            self.wait(30).until(shown)
        except TimeoutException:
            pass  # the caller's assertion names what is listed
        return listed

    def screenshot_materialization(self, asset_path: str, partition: str, path: Path) -> None:
        """The partition's latest materialization: its accounting table at the top, where its records
        went below."""
        self.open(f"/assets/{asset_path}?view=partitions&partition={partition}")
        accounting = self.visible("//td[normalize-space()='accounting']")
        self.visible("//*[normalize-space()='unaccounted']")
        self.visible("//td[normalize-space()='where_records_went']")
        self.driver.execute_script("arguments[0].scrollIntoView({block: 'start'})", accounting)
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


BACKFILL_QUERY = """
query Backfill($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill {
      status
      assetBackfillData {
        assetBackfillStatuses {
          ... on AssetPartitionsStatusCounts {
            assetKey { path }
            numPartitionsTargeted numPartitionsInProgress numPartitionsMaterialized numPartitionsFailed
          }
        }
      }
    }
    ... on PythonError { message }
  }
}"""


def _graphql(dev: DagsterDev, query: str, variables: dict) -> dict:
    request = urllib.request.Request(
        f"{dev.url}/graphql", data=json.dumps({"query": query, "variables": variables}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        answer = json.load(response)
    assert not answer.get("errors"), answer["errors"]
    return answer["data"]


def _wait_for_backfill(dev: DagsterDev, instance, backfill_id: str) -> dict:
    """The backfill once the daemon has finished it (GraphQL's partitionBackfillOrError)."""
    from dagster import RunsFilter

    deadline = time.monotonic() + BACKFILL_TIMEOUT
    while True:
        backfill = _graphql(dev, BACKFILL_QUERY, {"id": backfill_id})["partitionBackfillOrError"]
        assert backfill["__typename"] == "PartitionBackfill", backfill
        if backfill["status"] in BACKFILL_DONE:
            return backfill
        if time.monotonic() > deadline:
            runs = [
                (run.run_id[:8], sorted(key.to_user_string() for key in run.asset_selection or ()), run.status.value)
                for run in instance.get_runs(filters=RunsFilter(tags={"dagster/backfill": backfill_id}))
            ]
            raise AssertionError(
                f"backfill {backfill_id} still {backfill['status']} after {BACKFILL_TIMEOUT}s; its runs: {runs}; "
                f"see {dev.log}"
            )
        time.sleep(2)


def _exported_sha256s(export_root: Path, day: str) -> tuple[dict, set[str]]:
    """A day's export partition, complete (_SUCCESS manifest, its parts holding the rows it says): the
    manifest and the day's sha256s (hex)."""
    prefix = partition_prefix("vt_file_reports", day)
    manifest = json.loads((export_root / prefix / SUCCESS_MARKER).read_text())
    assert manifest["rows"] > 0 and manifest["parts"], (day, manifest)
    hashes: set[str] = set()
    for part in manifest["parts"]:  # part names are object names under the export root
        assert part["name"].startswith(prefix + "/part-"), (day, part)
        table = pq.read_table(export_root / part["name"], columns=["sha256"])
        assert table.num_rows == part["rows"], (day, part)
        hashes.update(value.hex() for value in table.column("sha256").to_pylist())
    assert sum(part["rows"] for part in manifest["parts"]) == manifest["rows"] == len(hashes), day
    return manifest, hashes


def test_sage_shard_and_vt_history_backfill_from_the_ui(dagster_dev: DagsterDev, browser, tmp_path: Path):
    from dagster import (
        AssetCheckKey,
        AssetKey,
        AssetRecordsFilter,
        DagsterEventType,
        DagsterInstance,
        DagsterRunStatus,
        RunsFilter,
    )
    from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus

    ui = UI(browser, dagster_dev, tmp_path / "ui_failure")
    screenshots = Path(settings.text("TI_UI_SCREENSHOTS") or tmp_path / "screenshots")
    if not screenshots.is_absolute():
        screenshots = REPO / screenshots
    screenshots.mkdir(parents=True, exist_ok=True)
    keys = {name: AssetKey([VT_GROUP, name]) for name in VT_ASSETS}
    export_key, broccoli_key, load_key = keys.values()

    # Launch both first: the Sage run and the backfill's daemon ticks overlap.
    with ui.step("first_visit"):
        ui.dismiss_community_dialog()
    with ui.step("launch_sage_dump_ioc_file_hashes"):
        sage_run_prefix = ui.materialize_partition("sage_dump/ioc_file_hashes", SHARD)
    with ui.step("select_the_three_vt_assets"):
        ui.select_in_group_graph(VT_GROUP, VT_ASSETS)
    with ui.step("launch_vt_history_backfill"):
        backfill_id = ui.launch_backfill_of_selection(len(VT_ASSETS), f"[{VT_DAYS[0]}...{VT_DAYS[-1]}]", len(VT_DAYS))

    instance = DagsterInstance.from_config(str(dagster_dev.home))
    try:
        # The Sage shard: its run succeeded, and the warehouse holds exactly the rows it says it wrote.
        sage_run = _wait_for_run(instance, sage_run_prefix)
        assert sage_run.status == DagsterRunStatus.SUCCESS, f"sage run {sage_run.run_id}: {sage_run.status}, see {dagster_dev.log}"
        assert sage_run.tags["dagster/partition"] == SHARD
        sage_event = instance.get_latest_materialization_event(AssetKey(["sage_dump", "ioc_file_hashes"]))
        sage_meta = sage_event.asset_materialization.metadata
        assert sage_event.asset_materialization.partition == SHARD
        assert sage_meta["unaccounted"].value == 0
        engine = sa.create_engine(f"sqlite:///{dagster_dev.data / 'warehouse.sqlite'}")
        table = schema.ioc_file_hashes
        try:
            with engine.connect() as conn:
                sage_rows = conn.execute(
                    sa.select(sa.func.count()).select_from(table).where(table.c.source == "SAGE_DUMP")
                ).scalar_one()
        finally:
            engine.dispose()
        assert sage_rows > 0
        assert sage_rows == sage_meta["written"].value
        with ui.step("run_page_sage"):
            ui.open(f"/runs/{sage_run.run_id}")
            ui.visible(_text_is("Success"))
            ui.visible(f"//*[starts-with(normalize-space(), 'partition:') and contains(normalize-space(), '{SHARD}')]")
        with ui.step("screenshot_materialization"):
            ui.screenshot_materialization("sage_dump/ioc_file_hashes", SHARD, screenshots / "materialization_metadata.png")

        # The VT history backfill: done, failed for BLOCKED only, for each of the three assets.
        backfill = _wait_for_backfill(dagster_dev, instance, backfill_id)
        assert backfill["status"] == "COMPLETED_FAILED", f"backfill {backfill_id}: {backfill}, see {dagster_dev.log}"
        counts = {
            "/".join(s["assetKey"]["path"]): (s["numPartitionsTargeted"], s["numPartitionsInProgress"],
                                              s["numPartitionsMaterialized"], s["numPartitionsFailed"])
            for s in backfill["assetBackfillData"]["assetBackfillStatuses"]
        }
        assert counts == {key.to_user_string(): (3, 0, 2, 1) for key in keys.values()}, counts

        # Its runs: one export run for the 3 days (failed: BLOCKED's check), then Broccoli and load of
        # the 2 other days, all succeeded; nothing ever ran for BLOCKED's Broccoli or load.
        runs = instance.get_runs(filters=RunsFilter(tags={"dagster/backfill": backfill_id}))
        export_runs = [run for run in runs if export_key in run.asset_selection]
        assert len(export_runs) == 1, [(run.run_id, run.asset_selection) for run in runs]
        [export_run] = export_runs
        assert export_run.asset_selection == {export_key}
        assert export_run.status == DagsterRunStatus.FAILURE, export_run.status
        assert (export_run.tags["dagster/asset_partition_range_start"],
                export_run.tags["dagster/asset_partition_range_end"]) == (VT_DAYS[0], VT_DAYS[-1])
        downstream = [run for run in runs if run is not export_run]
        assert {run.status for run in downstream} == {DagsterRunStatus.SUCCESS}, [(r.run_id, r.status) for r in downstream]
        for key in (broccoli_key, load_key):
            days = sorted(run.tags["dagster/partition"] for run in downstream if key in run.asset_selection)
            assert days == list(LOADED), (key, days)
        failures = instance.all_logs(export_run.run_id, of_type=DagsterEventType.STEP_FAILURE)
        assert len(failures) == 1, failures
        message = failures[0].dagster_event.step_failure_data.error.message
        assert BLOCKED in message and "packages_corrupt" in message, message

        # Materialized: the 2 other days of each asset, never BLOCKED.
        for key in keys.values():
            assert instance.get_materialized_partitions(key) == set(LOADED), key

        # The blocking check packages_corrupt: passed on the 2 days, failed at ERROR on BLOCKED (1 package of 4 cut).
        evaluations = {
            record.partition: record
            for record in instance.event_log_storage.get_asset_check_execution_history(
                AssetCheckKey(export_key, "packages_corrupt"), limit=10
            )
        }
        assert {day: record.status for day, record in evaluations.items()} == {
            day: AssetCheckExecutionRecordStatus.FAILED if day == BLOCKED else AssetCheckExecutionRecordStatus.SUCCEEDED
            for day in VT_DAYS
        }
        failed = evaluations[BLOCKED].event.dagster_event.event_specific_data
        assert (failed.passed, failed.severity.value, failed.blocking) == (False, "ERROR", True)
        assert evaluations[BLOCKED].run_id == export_run.run_id
        figures = {name: value.value for name, value in failed.metadata.items()}
        assert (figures["packages_corrupt"], figures["packages_found"]) == (1, 4), figures
        assert figures["corrupt_share"] > figures["max_corrupt_share"], figures

        # The exports: all 3 days published (BLOCKED too: exported, not materialized), each materialized
        # day's figures those of its manifest.
        export_root = dagster_dev.data / "export"
        exported = {day: _exported_sha256s(export_root, day) for day in VT_DAYS}
        loads = {}
        for day in LOADED:
            [export_record] = instance.fetch_materializations(
                AssetRecordsFilter(asset_key=export_key, asset_partitions=[day]), limit=5
            ).records
            assert export_record.asset_materialization.metadata["written"].value == exported[day][0]["rows"], day
            [load_record] = instance.fetch_materializations(
                AssetRecordsFilter(asset_key=load_key, asset_partitions=[day]), limit=5
            ).records
            loads[day] = {name: value.value for name, value in load_record.asset_materialization.metadata.items()}
            assert loads[day]["unaccounted"] == 0 and loads[day]["written"] > 0, (day, loads[day])
    finally:
        instance.dispose()

    # The warehouse: the VT rows are the 2 loaded days' (each inserted once), none only BLOCKED had.
    engine = sa.create_engine(f"sqlite:///{dagster_dev.data / 'warehouse.sqlite'}")
    try:
        with engine.connect() as conn:
            vt_rows = {bytes(row[0]).hex() for row in conn.execute(sa.select(table.c.sha256).where(table.c.source == "VIRUS_TOTAL"))}
    finally:
        engine.dispose()
    loaded_hashes = set().union(*(exported[day][1] for day in LOADED))
    only_blocked = exported[BLOCKED][1] - loaded_hashes
    assert only_blocked, "the sample's blocked day should have hashes of its own"
    assert len(vt_rows) == sum(loads[day]["inserted"] for day in LOADED) > 0, (len(vt_rows), loads)
    assert vt_rows <= loaded_hashes, sorted(vt_rows - loaded_hashes)[:5]
    assert not vt_rows & only_blocked, sorted(vt_rows & only_blocked)[:5]

    # The browser: the backfill's page, then the partitions views of the export and of the load.
    with ui.step("backfill_page"):
        ui.open(f"/runs/b/{backfill_id}")
        ui.visible("//*[normalize-space()='Status']/following-sibling::*[1][normalize-space()='Failed']")
        for key in keys.values():
            # A row of the assets table: the name (a link) and its status bar, then the four counts.
            name = ui.visible(f"//a[./*[@title='{' / '.join(key.path)}']]")  # a truncating label: its title
            row = name.find_element(By.XPATH, "./ancestor::*[count(*) = 5][1]")
            cells = [cell.text.strip() for cell in row.find_elements(By.XPATH, "./*")][1:]
            assert cells == ["3", "0", "2", "1"], (key, cells)  # targeted, in progress, succeeded, failed
    vt_file_reports, ioc_file_hashes = f"{VT_GROUP}/vt_file_reports", f"{VT_GROUP}/ioc_file_hashes"
    with ui.step("partitions_vt_file_reports"):
        assert ui.open_partitions(vt_file_reports, VT_DAYS, status="FAILED") == 1
        assert ui.listed_partitions([BLOCKED]) == [BLOCKED]
        assert ui.open_partitions(vt_file_reports, VT_DAYS, partition=BLOCKED) == 3
        assert ui.partition_counts() == {"Failed": 1, "Materialized": 2, "Materializing": 0, "Missing": 0}
        ui.visible(f"//*[starts-with(normalize-space(), 'Run {export_run.run_id[:8]} failed, and did not materialize this asset')]")
        ui.driver.save_screenshot(str(screenshots / "vt_file_reports_partitions.png"))
    with ui.step("partitions_ioc_file_hashes"):
        assert ui.open_partitions(ioc_file_hashes, VT_DAYS, status="MISSING") == 1
        assert ui.listed_partitions([BLOCKED]) == [BLOCKED]
        assert ui.open_partitions(ioc_file_hashes, VT_DAYS, partition=BLOCKED) == 3
        assert ui.partition_counts() == {"Failed": 0, "Materialized": 2, "Materializing": 0, "Missing": 1}
        ui.visible("//*[normalize-space()='Latest materialization']/following-sibling::*[1][normalize-space()='None']")
        ui.driver.save_screenshot(str(screenshots / "ioc_file_hashes_partitions.png"))
    with ui.step("screenshot_group_graph"):
        ui.screenshot_group_graph(VT_GROUP, "(1 failed)", screenshots / "vt_feed_graph.png")
    for name in ("materialization_metadata.png", "vt_file_reports_partitions.png", "ioc_file_hashes_partitions.png",
                 "vt_feed_graph.png"):
        assert _png_size(screenshots / name) == VIEWPORT, name
