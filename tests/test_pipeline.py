"""The whole study through DVC on the micro preset, in a temporary copy of the repository.

One module-scoped study is run once and then edited, re-run, killed and resumed, so the suite pays for a
single full pipeline run; its report is then opened in headless Chromium, its DVC metrics shown, its
notebooks run from notebooks/ and the explore notebook run in a real JupyterLab in that browser.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from optsweep.results.documents import SweepResult

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


def _run(args: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if check and done.returncode != 0:
        command = " ".join(args)
        raise AssertionError(f"{command} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}")
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
    # Start from no results: the committed ones belong to the default preset, not to this micro study. The
    # folder of other optimizers' results is part of the layout (the speedup stage depends on it).
    shutil.rmtree(target / "results", ignore_errors=True)
    (target / "results/optimizers").mkdir(parents=True)
    (target / "results/optimizers/.gitkeep").touch()
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
        assert SweepResult.model_validate(sweep).runs_beating_best() == []  # it ended on its lowest run
        assert sweep["noise"]["std"] is not None  # measured on seeds
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


def test_another_optimizer_goes_through_every_stage_into_the_speedup_and_the_report(study):
    root, output = study
    params = yaml.safe_load((root / "params/study.yaml").read_text())
    (name,) = params["optimizers"]
    stages = {f"optimizer_{stage}@{name}" for stage in ("sweeps", "sensitivity", "law_sweeps", "scaling_law")}
    assert stages | {"speedup"} <= _stages_run(output)
    for scale in params["scales"]:
        ours = json.loads((root / f"results/sweeps/{scale}.json").read_text())
        theirs = json.loads((root / f"results/optimizers/{name}/sweeps/{scale}.json").read_text())
        assert theirs["optimizer"] == name and set(theirs["free"]) == set(params["optimizers"][name]["grid"])
        assert theirs["transfer"]["source"] == "adamw" and theirs["transfer"]["tuned_loss"] == theirs["best_loss"]
        assert theirs["transfer"]["hparams"]["lr"] == ours["best"]["lr"]
        assert {run["key"] for run in theirs["runs"]}.isdisjoint(run["key"] for run in ours["runs"])
    for document in ("sensitivity.json", "scaling_law.json"):
        assert (root / f"results/optimizers/{name}/{document}").is_file()
    speedup = json.loads((root / "results/speedup.json").read_text())
    assert speedup["speedups"] == [] and any("needs 3" in line for line in speedup["skipped"])
    report = (root / "reports/index.html").read_text()
    assert "Other optimizers against the tuned AdamW" in report and "needs 3" in report


def test_second_repro_runs_nothing(study):
    root, _ = study
    done = _run(["dvc", "repro"], root)
    assert _stages_run(done.stdout + done.stderr) == set()


def _store_files(root: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in (root / "runs").glob("*.json")}  # records (not claims, checkpoints)


def test_an_edit_killed_mid_repro_resumes_without_retraining_and_reruns_only_its_scale(study):
    """One edit, one kill, one resumed repro: the resumed repro trains none of the runs the killed one
    finished, and re-runs only the edited scale's sweep and what follows (the others' result files are
    unchanged, so their report stages do not run). The cheapest scale is edited, to keep the suite short."""
    root, _ = study
    _edit_scale(root, "a", tokens=12288)
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
    ran = _stages_run(_run(["dvc", "repro"], root).stdout)
    after = _store_files(root)
    assert all(after[p] == mtime for p, mtime in finished.items()), "a finished run was trained again"
    sweep = json.loads((root / "results/sweeps/a.json").read_text())
    assert sweep["scale"]["tokens"] == 12288
    assert sweep["compute"]["runs_reused"] >= len(finished) - len(before)
    assert {"sweeps", "sweep@a", "sensitivity", "report"} <= ran  # the phase searches on one pool
    assert not ran & {"prepare", "sweep@a5d", "sweep@b5n"}  # untouched scales: same result file, no report


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


# --- the study as JupyterLab sees it ------------------------------------------------------------------
# These run last: executing the stage notebooks by hand rewrites results files (same results, new timings).


def test_dvc_metrics_show_prints_the_declared_metrics(study):
    root, _ = study
    params = yaml.safe_load((root / "params/study.yaml").read_text())
    shown = _run(["dvc", "metrics", "show"], root).stdout
    for name in [*params["scales"], *params["law_scales"]]:
        assert f"best_loss.{name}" in shown
    for hparam in params["grid"]:
        assert f"sensitive.{hparam}" in shown
    laws = json.loads((root / "results/scaling_law.json").read_text())["laws"]
    assert all(f"law_exponents.{hparam}." in shown for hparam in laws)
    metrics = json.loads((root / "results/metrics.json").read_text())
    assert metrics["best_loss"] == {
        name: json.loads((root / f"results/{folder}/{name}.json").read_text())["best_loss"]
        for folder, key in (("sweeps", "scales"), ("law_sweeps", "law_scales")) for name in params[key]
    }


def test_every_notebook_runs_from_the_notebooks_folder_with_its_defaults(study, tmp_path):
    """As JupyterLab starts kernels: in notebooks/, with the parameters cell as written."""
    root, _ = study
    params = yaml.safe_load((root / "params/study.yaml").read_text())
    runs_before = len(list((root / "runs").glob("*.json")))
    results_before = {p: p.stat().st_mtime_ns for p in (root / "results").rglob("*sweeps/*.json")}
    runs = [("sweep.py",), ("sweep.py", "-p", "phase=law"), ("sensitivity.py",), ("scaling_law.py",),
            ("report.py",), ("explore.py",)]
    for number, (notebook, *parameters) in enumerate(runs):
        _run(["optsweep", "notebook", notebook, "--html", str(tmp_path / f"{number}.html"), *parameters],
             root / "notebooks")
    first, first_law = next(iter(params["scales"])), next(iter(params["law_scales"]))
    for folder, name in (("sweeps", first), ("law_sweeps", first_law)):
        assert (root / f"results/{folder}/{name}.json") in results_before  # the project's results were found
    # the sweep notebooks showed the phase's results: nothing trained, no result rewritten
    assert len(list((root / "runs").glob("*.json"))) == runs_before
    assert {p: p.stat().st_mtime_ns for p in (root / "results").rglob("*sweeps/*.json")} == results_before
    assert not {"runs", "results", "data", "build"} & {p.name for p in (root / "notebooks").iterdir()}
    assert (root / "build/notebooks/5.ipynb").is_file()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def jupyterlab(study):
    """A real JupyterLab server on the study, started as `make lab` does, on a free loopback port."""
    root, _ = study
    port, token = _free_port(), secrets.token_hex(16)
    command = ["jupyter", "lab", "--no-browser", "--notebook-dir=.", "--ip=127.0.0.1", f"--port={port}",
               f"--IdentityProvider.token={token}", "--LabApp.expose_app_in_browser=True"]
    if os.geteuid() == 0:
        command.append("--allow-root")
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    server = subprocess.Popen(command, cwd=root, env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=5).close()
            break
        except OSError:
            assert server.poll() is None and time.monotonic() < deadline, "JupyterLab did not start"
            time.sleep(0.5)
    yield url, token
    os.killpg(server.pid, signal.SIGTERM)  # the server shuts its kernels down on SIGTERM
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


# In the lab page: open notebooks/explore.py as a notebook (jupytext), run every cell on a kernel the server
# starts in notebooks/, and return each code cell's execution count and outputs.
RUN_EXPLORE_IN_LAB = """
const done = arguments[arguments.length - 1];
const app = window.jupyterapp;
app.started.then(async () => {
  const panel = await app.commands.execute('docmanager:open', {path: 'notebooks/explore.py', factory: 'Notebook'});
  await panel.context.ready;
  await panel.sessionContext.ready;
  const ok = await app.commands.execute('notebook:run-all-cells');
  const cells = [];
  for (let i = 0; i < panel.content.model.cells.length; i++) cells.push(panel.content.model.cells.get(i).toJSON());
  done({ok, kernel: panel.sessionContext.session.kernel.name,
        cells: cells.filter(c => c.cell_type === 'code').map(c => ({count: c.execution_count, outputs: c.outputs}))});
}).catch(error => done({error: String(error)}));
"""


def test_explore_notebook_runs_in_jupyterlab_in_a_browser(study, browser, jupyterlab):
    url, token = jupyterlab
    browser.get(f"{url}/lab?token={token}")
    deadline = time.monotonic() + 120
    while not browser.execute_script("return !!window.jupyterapp"):
        assert time.monotonic() < deadline, "the JupyterLab page did not load"
        time.sleep(0.5)
    browser.set_script_timeout(300)
    ran = browser.execute_async_script(RUN_EXPLORE_IN_LAB)
    assert "error" not in ran, ran["error"]
    assert ran["ok"] and ran["kernel"] == "python3"
    errors = [o for cell in ran["cells"] for o in cell["outputs"] if o["output_type"] == "error"]
    assert not errors, [f"{o['ename']}: {o['evalue']}" for o in errors]
    assert all(cell["count"] for cell in ran["cells"]), "a cell did not run"
    figures = [o for cell in ran["cells"] for o in cell["outputs"] if "image/png" in o.get("data", {})]
    laws = json.loads((study[0] / "results/scaling_law.json").read_text())["laws"]
    assert len(figures) >= 3 + len(laws)  # run store, landscape, trajectories, and one per fitted law
