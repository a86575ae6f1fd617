"""The OHIF viewer served by a real daemon, in a real browser: Chromium (Debian's
``chromium`` and ``chromium-driver``) driven by selenium.

One daemon with the archive and a ``web:`` listener whose ``viewer`` is the folder
``scripts/viewer`` fills (``var/viewer``, fetched once), holding what dcmtk
``storescu`` sent: a CT series of twelve slices made from pydicom's 512 x 512
``693_UNCR``, ``CT_small`` and ``MR_small``.  Headless Chromium opens ``/``,
sees every study in the study list, clicks the series' study and its "Basic
Viewer", and waits for the viewport's canvas to show an image (its pixels, read
back as a PNG of the element, far from uniform).  Every request of the page
that failed (a status of 400 or more, or no answer) fails the test with its
URL, and so does an error in the browser's console or a traceback in the
daemon's log; the console and the daemon's log are in the report.

``DICOMD_SCREENSHOT=docs/viewer.png`` saves the page with the study open, as
the README shows it (a palette PNG of a few tens of kB).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageStat
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from tests.support.archive import archive_plugin
from tests.support.daemons import RunningDaemon, start_daemon
from tests.support.dcmtk import run_dcmtk
from tests.support.processes import LOCALHOST, REPO_ROOT, free_tcp_port

pytestmark = pytest.mark.usefixtures("report_module_daemons")

VIEWER_FOLDER = REPO_ROOT / "var" / "viewer"
SLICES = 12
SLICE_SOURCE = "693_UNCR.dcm"  # a real head CT slice, 512 x 512, uncompressed
SERIES_PATIENT = "VIEWER^SERIES"
SINGLE_FILES = ("CT_small.dcm", "MR_small.dcm")
PAGE_DEADLINE = 45.0
MIN_PIXEL_SPREAD = 20.0  # standard deviation of the canvas' grey levels: a blank one is 0
SCREENSHOT_VARIABLE = "DICOMD_SCREENSHOT"
SCREENSHOT_COLOURS = 96


@dataclass
class ViewerArchive:
    daemon: RunningDaemon
    url: str
    series_study: str
    patient_names: list[str]


def listed_name(patient_name: str) -> str:
    """A person name as the viewer's study list writes it: ``Family, Given``."""
    return ", ".join(part for part in patient_name.split("^")[:2] if part)


def write_series(folder: Path) -> str:
    """Twelve slices of one CT series of one study, 2.5 mm apart; the study's UID."""
    study, series = generate_uid(), generate_uid()
    for number in range(1, SLICES + 1):
        ds = dcmread(get_testdata_file(SLICE_SOURCE))
        ds.PatientName, ds.PatientID = SERIES_PATIENT, "DICOMD-VIEWER"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.StudyDescription, ds.SeriesDescription = "Twelve slices", "CT axial"
        ds.InstanceNumber, ds.SliceThickness = number, 2.5
        x, y, z = (float(value) for value in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y, z + 2.5 * number]
        ds.SliceLocation = z + 2.5 * number
        ds.save_as(folder / f"slice{number:02}.dcm")
    return study


@pytest.fixture(scope="module")
def viewer_folder() -> Path:
    """The pinned OHIF viewer, fetched by scripts/viewer unless already there."""
    fetched = subprocess.run(
        [str(REPO_ROOT / "scripts" / "viewer"), str(VIEWER_FOLDER)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert fetched.returncode == 0, fetched.stdout + fetched.stderr
    return VIEWER_FOLDER


@pytest.fixture(scope="module")
def archive(
    tmp_path_factory: pytest.TempPathFactory,
    module_daemons: list[RunningDaemon],
    viewer_folder: Path,
) -> ViewerArchive:
    folder = tmp_path_factory.mktemp("viewer")
    files = folder / "files"
    files.mkdir()
    series_study = write_series(files)
    web_port = free_tcp_port()
    daemon = start_daemon(
        folder,
        {
            "plugins": [archive_plugin()],
            "workers": 1,
            "web": {
                "listen": f"tcp:{web_port}:interface={LOCALHOST}",
                "viewer": str(viewer_folder),
            },
        },
    )
    module_daemons.append(daemon)
    sent = [*sorted(files.iterdir()), *(Path(get_testdata_file(name)) for name in SINGLE_FILES)]
    stored = run_dcmtk(
        "storescu", "-xy", "-aec", daemon.ae_title, LOCALHOST, str(daemon.port),
        *map(str, sent), timeout=120,
    )  # fmt: skip
    assert stored.returncode == 0, stored.stdout + stored.stderr
    names = [SERIES_PATIENT] + [
        str(dcmread(get_testdata_file(name), stop_before_pixels=True).PatientName)
        for name in SINGLE_FILES
    ]
    return ViewerArchive(daemon, f"http://{LOCALHOST}:{web_port}", series_study, names)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Page]:
    """Headless Chromium with a profile of its own."""
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver_path is None:
        pytest.fail(
            "Chromium and its driver are not installed: scripts/test installs Debian's "
            "chromium and chromium-driver"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    options.add_argument("--headless=new")
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    options.add_argument("--window-size=1280,800")
    options.add_argument("--disable-dev-shm-usage")
    options.add_argument("--disable-background-networking")  # the page's requests alone
    options.add_argument("--no-first-run")
    options.add_argument("--enable-unsafe-swiftshader")  # WebGL without a GPU
    if os.geteuid() == 0:
        options.add_argument("--no-sandbox")  # Chromium refuses its sandbox to root
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    try:
        yield Page(driver)
    finally:
        driver.quit()


class Page:
    """The browser's page, and what went wrong in it when a test fails."""

    def __init__(self, driver: WebDriver) -> None:
        self.driver = driver
        self._requests: dict[str, str] = {}
        self.failures: list[str] = []
        self._console: list[dict[str, Any]] = []

    def wait_for(self, condition: Callable[[], Any], what: str) -> Any:
        """The first true value of ``condition``, polled for `PAGE_DEADLINE` seconds; past
        that, the test fails with the page's failed requests and console."""
        end = time.monotonic() + PAGE_DEADLINE
        while True:
            try:
                value = condition()
            except WebDriverException:
                value = None
            if value:
                return value
            if time.monotonic() > end:
                pytest.fail(f"after {PAGE_DEADLINE:.0f} s, still waiting for {what}\n{self}")
            time.sleep(0.25)

    def failed_requests(self) -> list[str]:
        """Every request of the page so far that got a status of 400 or more, or none."""
        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            parameters = message.get("params", {})
            if message["method"] == "Network.requestWillBeSent":
                url = parameters["request"]["url"]
                if url.startswith(("http:", "https:")):
                    self._requests[parameters["requestId"]] = url
            elif message["method"] == "Network.responseReceived":
                response = parameters["response"]
                if response["status"] >= 400:
                    self.failures.append(f"{response['status']} {response['url']}")
            elif message["method"] == "Network.loadingFailed" and not parameters.get("canceled"):
                url = self._requests.get(parameters["requestId"])
                if url is not None:  # else Chromium's own, before the page (its new tab page)
                    self.failures.append(f"{parameters.get('errorText')} {url}")
        return self.failures

    def console(self, *levels: str) -> list[str]:
        """The page's console messages so far of these levels."""
        self._console += self.driver.get_log("browser")
        return [
            f"{entry['level']} {entry['message']}"
            for entry in self._console
            if entry["level"] in levels
        ]

    def __str__(self) -> str:
        failed = "\n".join(self.failed_requests())
        console = "\n".join(self.console("SEVERE", "WARNING"))
        return f"failed requests:\n{failed}\nconsole:\n{console}"

    def canvas_spread(self) -> float:
        """The standard deviation of the grey levels of the viewport's canvas (0 if none)."""
        canvases = self.driver.find_elements(By.CSS_SELECTOR, "canvas.cornerstone-canvas")
        if not canvases or not canvases[0].is_displayed():
            return 0.0
        shown = Image.open(io.BytesIO(canvases[0].screenshot_as_png)).convert("L")
        return float(ImageStat.Stat(shown).stddev[0])


def save_screenshot(driver: WebDriver, path: Path) -> None:
    """The page as a palette PNG: the viewer's few colours keep it small."""
    page = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
    path.parent.mkdir(parents=True, exist_ok=True)
    page.quantize(colors=SCREENSHOT_COLOURS).save(path, optimize=True)


def test_the_study_list_shows_the_archive_and_a_click_shows_the_series(
    archive: ViewerArchive, browser: Page
) -> None:
    driver = browser.driver
    started = time.monotonic()
    driver.get(archive.url + "/")
    wanted = [listed_name(name) for name in archive.patient_names]
    body = driver.find_element(By.TAG_NAME, "body")
    browser.wait_for(
        lambda: all(name in body.text for name in wanted), f"the study list to show {wanted}"
    )
    listed = time.monotonic()

    driver.find_element(By.XPATH, f"//*[text()='{listed_name(SERIES_PATIENT)}']").click()
    browser.wait_for(
        lambda: driver.find_element(By.XPATH, "//button[normalize-space(.)='Basic Viewer']"),
        "the study's Basic Viewer button",
    ).click()
    browser.wait_for(
        lambda: f"StudyInstanceUIDs={archive.series_study}" in driver.current_url,
        "the viewer's route of the study",
    )
    spread = browser.wait_for(
        lambda: (spread := browser.canvas_spread()) > MIN_PIXEL_SPREAD and spread,
        "an image in the viewport's canvas",
    )
    shown = time.monotonic()
    assert "CT axial" in body.text  # the series' thumbnail in the study browser

    screenshot = os.environ.get(SCREENSHOT_VARIABLE)
    if screenshot:
        time.sleep(1.0)  # the thumbnail and the overlays settle
        save_screenshot(driver, REPO_ROOT / screenshot)
    assert browser.failed_requests() == [], browser
    assert browser.console("SEVERE") == [], browser
    assert "Traceback" not in archive.daemon.log_text()
    print(
        f"study list after {listed - started:.1f} s, image after {shown - listed:.1f} s"
        f" more (canvas grey level spread {spread:.0f})"
    )
