"""The whole study through DVC on the micro preset, in a temporary copy of the repository.

One module-scoped study is run once and then edited, re-run, killed and resumed, so the suite pays for a
single full pipeline run; its report is then opened in headless Chromium.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


def _run(args: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}")
    return done


def _stages_run(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def _copy_repo(target: Path) -> None:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    # Start from no results: the committed ones belong to the default preset, not to this micro study.
    shutil.rmtree(target / "results", ignore_errors=True)
    shutil.rmtree(target / "reports", ignore_errors=True)
    (target / "dvc.lock").unlink(missing_ok=True)
    _run(["git", "init", "-q"], target)
    _run(["git", "add", "-A"], target)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy"], target)


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("study")
    _copy_repo(root)
    _run(["optsweep", "preset", "micro"], root)
    done = _run(["dvc", "repro"], root)
    return root, done.stdout + done.stderr


def _edit_scale(root: Path, name: str, **changes: int) -> None:
    path = root / "params/study.yaml"
    raw = yaml.safe_load(path.read_text())
    raw["scales" if name in raw["scales"] else "law_scales"][name].update(changes)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


def test_study_writes_every_result_and_the_report(study):
    root, output = study
    params = yaml.safe_load((root / "params/study.yaml").read_text())
    assert {"prepare", "sensitivity", "scaling_law", "report"} <= _stages_run(output)
    for name in params["scales"]:
        sweep = json.loads((root / f"results/sweeps/{name}.json").read_text())
        assert sweep["scale"]["name"] == name and sweep["phase"] == "phase1"
        assert sweep["best_loss"] == min(r["loss"] for r in sweep["runs"] if r["status"] == "ok")
        assert set(sweep["slices"]) == set(params["grid"])
        assert (root / f"reports/sweeps/{name}.html").stat().st_size > 10_000
    sensitivity = json.loads((root / "results/sensitivity.json").read_text())
    assert set(sensitivity["hyperparameters"]) == set(params["grid"])
    for name in params["law_scales"]:
        law_sweep = json.loads((root / f"results/law_sweeps/{name}.json").read_text())
        assert law_sweep["phase"] == "law"
        assert set(law_sweep["free"]) == set(sensitivity["sensitive"]) & set(params["grid"])
    laws = json.loads((root / "results/scaling_law.json").read_text())
    assert set(laws["laws"]) | set(laws["unfitted"]) == set(sensitivity["sensitive"])
    report = (root / "reports/index.html").read_text()
    for name in [*params["scales"], *params["law_scales"]]:
        assert name in report
    assert "data:image/png;base64" in report and "Recommended hyperparameters" in report


def test_second_repro_runs_nothing(study):
    root, _ = study
    done = _run(["dvc", "repro"], root)
    assert _stages_run(done.stdout + done.stderr) == set()


def test_editing_one_scale_reruns_only_its_sweep_and_what_follows(study):
    root, _ = study
    _edit_scale(root, "a5d", tokens=45056)
    ran = _stages_run(_run(["dvc", "repro"], root).stdout)
    assert "sweep@a5d" in ran and {"sensitivity", "report"} <= ran
    assert not ran & {"prepare", "sweep@a", "sweep@b5n"}


def _store_files(root: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in (root / "runs").rglob("*.json")}


def test_killed_repro_resumes_without_retraining(study):
    root, _ = study
    _edit_scale(root, "b5n", tokens=12288)
    before = _store_files(root)
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    repro = subprocess.Popen(["dvc", "repro"], cwd=root, env=env, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while len(_store_files(root)) < len(before) + 2 and time.monotonic() < deadline and repro.poll() is None:
        time.sleep(0.2)
    os.killpg(repro.pid, signal.SIGKILL)
    repro.wait()
    time.sleep(3)  # let orphaned kernels and workers notice their parent is gone
    finished = _store_files(root)
    assert len(finished) >= len(before) + 2, "the sweep should have stored runs before the kill"
    _run(["dvc", "repro"], root)
    after = _store_files(root)
    assert all(after[p] == mtime for p, mtime in finished.items()), "a finished run was trained again"
    sweep = json.loads((root / "results/sweeps/b5n.json").read_text())
    assert sweep["scale"]["tokens"] == 12288
    assert sweep["compute"]["runs_reused"] >= len(finished) - len(before)


# --- the report in a real browser ---------------------------------------------------------------------

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        if os.environ.get("CI"):
            pytest.fail("chromium and chromium-driver are missing: `make test` installs them")
        pytest.skip("needs chromium and chromium-driver (`make test` installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def _images(driver) -> list[dict]:
    return driver.execute_script(
        "return Array.from(document.images).map(i => ({src: i.src.slice(0, 40), complete: i.complete, "
        "width: i.naturalWidth}))"
    )


def test_report_figures_load_without_console_errors(study, browser):
    root, _ = study
    pages = [root / "reports/index.html", *sorted((root / "reports/sweeps").glob("*.html"))]
    for page in pages:
        browser.get(page.as_uri())
        images = _images(browser)
        assert images, f"{page.name}: no figures"
        broken = [i for i in images if not i["complete"] or i["width"] == 0]
        assert not broken, f"{page.name}: figures that did not load: {broken}"
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, f"{page.name}: console errors: {errors}"


def test_report_links_to_every_sweep_report(study, browser):
    root, _ = study
    browser.get((root / "reports/index.html").as_uri())
    hrefs = browser.execute_script("return Array.from(document.links).map(a => a.getAttribute('href'))")
    for sweep_page in (root / "reports/sweeps").glob("*.html"):
        assert f"sweeps/{sweep_page.name}" in hrefs
        assert (root / "reports/sweeps" / sweep_page.name).is_file()
