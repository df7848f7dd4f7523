"""Plots, the comparison table and the self-contained HTML report (rendered in headless
Chromium when it is installed: ``apt-get install -y chromium``)."""

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mmlwf.analysis.captions import CAPTIONS, caption, write_rst
from mmlwf.analysis.plots import PLOT_FILES
from mmlwf.cli import main

from .analysis_fixtures import trained_dcmnet, trained_run  # noqa: F401

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _evaluate_into(run, t):
    assert main(["evaluate", str(run), "--data", str(t.data), "--split", str(t.split),
                 "-o", str(run / "metrics.json"), "--predictions", str(run / "predictions.csv"),
                 "--atom-predictions", str(run / "predictions_atoms.npz")]) == 0


@pytest.fixture(scope="module")
def runs(trained_run, tmp_path_factory):  # noqa: F811
    """Two PhysNet run directories: ``evaluated`` (metrics.json, predictions, plots/) and
    ``bare`` (a copy of the same training without any of them)."""
    t = trained_run
    root = tmp_path_factory.mktemp("report_runs")
    evaluated, bare = root / "evaluated", root / "bare"
    shutil.copytree(t.run, evaluated)
    shutil.copytree(t.run, bare)
    _evaluate_into(evaluated, t)
    assert main(["plot", str(evaluated), "-o", str(evaluated / "plots")]) == 0
    return evaluated, bare


@pytest.fixture(scope="module")
def dcm_run(trained_dcmnet, tmp_path_factory):  # noqa: F811
    """A DCMNet run directory with metrics.json and predictions but no plots/."""
    run = tmp_path_factory.mktemp("report_dcm") / "dcm"
    shutil.copytree(trained_dcmnet.run, run)
    _evaluate_into(run, trained_dcmnet)
    return run


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, path
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_every_plot_file_is_produced(runs):
    evaluated, _ = runs
    names = sorted(p.name for p in (evaluated / "plots").iterdir())
    assert names == sorted(PLOT_FILES["physnet"])
    for name in names:
        w, h = _png_size(evaluated / "plots" / name)
        assert w >= 300 and h >= 300, name


def test_every_dcmnet_plot_file_is_produced(dcm_run, tmp_path):
    assert main(["plot", str(dcm_run), "-o", str(tmp_path / "figs")]) == 0
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == sorted(PLOT_FILES["dcmnet"])
    for name in PLOT_FILES["dcmnet"]:
        w, h = _png_size(tmp_path / "figs" / name)
        assert w >= 300 and h >= 300, name


def test_plot_evaluates_when_there_are_no_predictions(runs, tmp_path, capsys):
    _, bare = runs
    assert main(["plot", str(bare), "-o", str(tmp_path / "figs")]) == 0  # dataset and split from model.json
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == sorted(PLOT_FILES["physnet"])
    assert not (bare / "plots").exists()


def test_density_parity_for_many_points(tmp_path):
    from matplotlib.figure import Figure

    from mmlwf.analysis import plots

    rng = np.random.default_rng(0)
    n = plots.DENSITY_THRESHOLD + 1
    ref = rng.normal(size=(n // 3 + 1, 3))
    pred = {"F_ref": ref, "F_pred": ref + 0.1 * rng.normal(size=ref.shape)}
    plots.plot_parity_forces(pred, tmp_path / "f.png")
    ax = Figure().subplots()
    plots._parity(ax, pred["F_ref"], pred["F_pred"], "force", "eV/Å")
    assert len(ax.collections) == 1 and type(ax.collections[0]).__name__ == "PolyCollection"  # hexbin
    ax = Figure().subplots()
    plots._parity(ax, ref[:10], ref[:10], "force", "eV/Å")
    assert type(ax.collections[0]).__name__ == "PathCollection"  # scatter


def test_captions():
    for names in PLOT_FILES.values():
        for name in names:
            assert len(caption(name)) > 40
    with pytest.raises(KeyError, match="no caption"):
        caption("nothing.png")


def test_caption_rst_files(tmp_path):
    paths = write_rst(tmp_path)
    assert len(paths) == len(CAPTIONS)
    assert (tmp_path / "parity_forces.rst").read_text().strip() == CAPTIONS["parity_forces.png"]


def test_metric_rows_units():
    from mmlwf.analysis.report import metrics_rows

    rows = metrics_rows({"n_structures": 3, "forces_mae_eV_per_A": 0.02, "energy_per_atom_rmse_eV": 0.5,
                         "dipole_norm_mae_eA": 0.20819434, "esp_rmse_kcal_per_mol_e": 1.5})
    assert rows[0] == ("structures", 3, "", None, "")
    assert rows[1] == ("forces MAE", 0.02, "eV/Å", pytest.approx(20.0), "meV/Å")
    assert rows[2][:3] == ("energy per atom RMSE", 0.5, "eV") and rows[2][3] == pytest.approx(500.0)
    assert rows[3][0] == "dipole norm MAE" and rows[3][3] == pytest.approx(1.0, rel=1e-6) and rows[3][4] == "D"
    assert rows[4] == ("esp RMSE", 1.5, "kcal/(mol·e)", None, "")


def test_compare_table(runs, tmp_path):
    import jax

    from mmlwf.training.checkpoint import load_params

    evaluated, bare = runs
    assert main(["compare", str(evaluated), str(bare), "-o", str(tmp_path / "t.csv")]) == 0
    t = pd.read_csv(tmp_path / "t.csv")
    assert list(t["experiment"]) == ["evaluated", "bare"]
    assert list(t["model_type"]) == ["physnet", "physnet"]
    assert list(t["features"]) == [8, 8] and list(t["cutoff_A"]) == [5.0, 5.0]  # default filled in
    assert list(t["learning_rate"]) == [0.003, 0.003] and list(t["batch_size"]) == [16, 16]
    history = pd.read_csv(bare / "history.csv")
    assert list(t["epochs"]) == [2, 2]
    assert t["training_time_s"].iloc[1] == pytest.approx(history["wall_time_s"].iloc[-1], rel=1e-5)
    params, _ = load_params(bare, ema=False)
    n = sum(np.size(x) for x in jax.tree_util.tree_leaves(params))
    assert list(t["n_params"]) == [n, n]
    metrics = json.loads((evaluated / "metrics.json").read_text())["metrics"]
    assert t["metrics_source"].iloc[0].startswith("metrics.json (test, n=25")
    assert t["forces_mae_eV_per_A"].iloc[0] == pytest.approx(metrics["forces_mae_eV_per_A"], rel=1e-5)
    best = history.loc[history["valid_loss"].idxmin()]
    assert t["metrics_source"].iloc[1] == f"history.csv (valid, epoch {int(best['epoch'])})"
    assert t["forces_mae_eV_per_A"].iloc[1] == pytest.approx(best["valid_forces_mae_eV_per_A"], rel=1e-5)


class _Refs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs, self.refs, self.tags = [], [], set()

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        for name, value in attrs:
            if name in ("src", "href", "data", "poster", "srcset", "action"):
                self.refs.append((tag, name, value or ""))
                if tag == "img" and name == "src":
                    self.imgs.append(value or "")


#: images in the report: both PhysNet runs (the bare one's made on the fly) and the DCMNet run
N_IMAGES = 2 * len(PLOT_FILES["physnet"]) + len(PLOT_FILES["dcmnet"])


@pytest.fixture(scope="module")
def report(runs, dcm_run, tmp_path_factory):
    evaluated, bare = runs
    path = tmp_path_factory.mktemp("report") / "report.html"
    assert main(["report", str(evaluated), str(bare), str(dcm_run), "-o", str(path)]) == 0
    return path


def test_report_is_self_contained(report, runs):
    text = report.read_text()
    assert not re.search(r"https?://", text) and "file:" not in text
    parser = _Refs()
    parser.feed(text)
    assert not {"link", "script", "iframe", "object", "embed"} & parser.tags
    assert len(parser.imgs) == N_IMAGES
    assert all(src.startswith("data:image/png;base64,") for src in parser.imgs)
    for tag, name, value in parser.refs:
        assert (tag == "img" and value.startswith("data:")) or (tag == "a" and value.startswith("#")), (tag, value)
    for name in set(PLOT_FILES["physnet"]) | set(PLOT_FILES["dcmnet"]):
        assert caption(name) in text.replace("&#x27;", "'")
    assert "Errors per element" in text and "esp RMSE" in text
    for name in ("evaluated", "bare", "dcm"):
        assert f'id="run-{name}"' in text
    assert list(report.parent.iterdir()) == [report]  # atomic write: no temporary left


def test_report_bad_run_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path), "-o", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err.strip()
    assert "model.json" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "r.html").exists()


# ----------------------------------------------------------------------------- a real browser

_PROBE = """<script>
window.addEventListener("load", () => {
  const imgs = Array.from(document.images);
  const ok = imgs.map(i => i.complete && i.naturalWidth > 0 && i.naturalHeight > 0);
  document.body.setAttribute("data-probe", JSON.stringify({n: imgs.length, ok: ok,
    widths: imgs.map(i => i.naturalWidth)}));
});
</script>"""


@pytest.fixture(scope="session")  # session: set up (and skipped) before the trained runs
def chromium() -> str:
    """The Chromium executable (the test skips without one, before building the report)."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no Chromium on PATH (Debian: apt-get install -y chromium)")


def _render(chromium: str, html_path: Path, tmp_path: Path) -> dict:
    """Load the page in headless Chromium and read back the image probe's result."""
    probe = tmp_path / f"probe-{html_path.name}"
    probe.write_text(html_path.read_text().replace("</body>", _PROBE + "</body>"))
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()]
    out = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120)
    m = re.search(r'data-probe="([^"]*)"', out.stdout)
    assert m, f"no probe result from chromium (rc {out.returncode}): {out.stderr[-500:]}"
    return json.loads(m.group(1).replace("&quot;", '"'))


def test_report_renders_in_headless_chromium(chromium, report, tmp_path):
    result = _render(chromium, report, tmp_path)
    assert result["n"] == N_IMAGES
    assert all(result["ok"]), result
    # the probe can fail: a broken image is seen as broken
    broken = tmp_path / "broken.html"
    broken.write_text(report.read_text().replace("</body>", '<img alt="x" src="data:image/png;base64,AAAA"></body>'))
    result = _render(chromium, broken, tmp_path)
    assert result["ok"][-1] is False and all(result["ok"][:-1])
