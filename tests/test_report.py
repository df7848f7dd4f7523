"""Plots, the comparison table and the self-contained HTML report (rendered in headless
Chromium when it is installed: ``apt-get install -y chromium``)."""

import html as html_lib
import io
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

from .analysis_fixtures import trained_dcmnet, trained_multi, trained_run  # noqa: F401

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
                         "dipole_norm_mae_eA": 0.20819434, "esp_rmse_V": 0.1, "esp_rmse_kcal_per_mol_e": 1.5,
                         "mono_mae_e": 0.1}, {"forces": 50.0, "energy": 1.0, "dipole": 25.0, "mono": 0.0, "esp": 1.0})
    assert rows[0] == ("structures", 3, "")
    assert rows[1] == ("forces MAE", pytest.approx(20.0), "meV/Å")
    assert rows[2] == ("energy per atom RMSE", pytest.approx(500.0), "meV/atom")
    assert rows[3] == ("dipole vector length MAE", pytest.approx(1.0, rel=1e-6), "D")  # 1 D = 0.20819434 e·Å
    assert rows[4] == ("ESP RMSE", 1.5, "kcal/(mol·e)")  # the value in V is not repeated
    assert rows[5] == ("atomic charges MAE (not trained: loss weight 0)", 0.1, "e")
    assert len(rows) == 6


def test_debye_constant():
    from mmlwf.units import DEBYE_PER_E_ANGSTROM

    assert DEBYE_PER_E_ANGSTROM == pytest.approx(4.803205, abs=1e-6)  # CODATA: 1 D = 0.2081943 e·Å


def _with_history_columns(run: Path, dest: Path, **columns) -> Path:
    """A copy of ``run`` whose history.csv has the extra per-epoch ``columns`` (lists)."""
    shutil.copytree(run, dest)
    h = pd.read_csv(dest / "history.csv")
    for name, values in columns.items():
        h[name] = values
    h.to_csv(dest / "history.csv", index=False)
    return dest


def _as_old_run(run: Path, dest: Path) -> Path:
    """A copy of ``run`` as an mmlwf version before the cost columns wrote it (none in history.csv)."""
    from mmlwf.training.history import COST_COLUMNS as HISTORY_COST_COLUMNS

    shutil.copytree(run, dest)
    h = pd.read_csv(dest / "history.csv")
    h.drop(columns=[c for c in HISTORY_COST_COLUMNS if c in h]).to_csv(dest / "history.csv", index=False)
    return dest


def test_compare_table(runs, tmp_path):
    import jax

    from mmlwf.analysis.compare import COST_COLUMNS, ERROR_COLUMNS, TRAINING_KEYS
    from mmlwf.training.checkpoint import load_params

    evaluated, bare = runs
    assert main(["compare", str(evaluated), str(bare), "-o", str(tmp_path / "t.csv")]) == 0
    t = pd.read_csv(tmp_path / "t.csv")
    assert list(t["experiment"]) == ["evaluated", "bare"]
    # headline errors first, in field units (named in the column), then cost, then hyperparameters
    cols = list(t.columns)
    errors = [c for c in cols if c in ERROR_COLUMNS]
    assert cols[1:len(errors) + 2] == errors + ["metrics_source"]
    assert errors[:5] == ["energy_mae_meV", "energy_rmse_meV", "energy_per_atom_mae_meV_per_atom",
                          "forces_mae_meV_per_A", "forces_rmse_meV_per_A"]
    assert "dipole_mae_D" in errors and not any(c.endswith(("_eV", "_eA", "_V")) for c in cols)
    assert cols.index("n_params") > cols.index("metrics_source") and cols.index("model_type") > cols.index("n_params")
    assert cols[-len(TRAINING_KEYS):] == list(TRAINING_KEYS)
    assert [c for c in cols if c in COST_COLUMNS] == list(COST_COLUMNS)
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
    assert t["forces_mae_meV_per_A"].iloc[0] == pytest.approx(1e3 * metrics["forces_mae_eV_per_A"], rel=1e-5)
    assert t["energy_mae_meV"].iloc[0] == pytest.approx(1e3 * metrics["energy_mae_eV"], rel=1e-5)
    assert t["dipole_mae_D"].iloc[0] == pytest.approx(4.80320 * metrics["dipole_mae_eA"], rel=1e-5)
    best = history.loc[history["valid_loss"].idxmin()]
    assert t["metrics_source"].iloc[1] == f"history.csv (valid, epoch {int(best['epoch'])})"
    assert t["forces_mae_meV_per_A"].iloc[1] == pytest.approx(1e3 * best["valid_forces_mae_eV_per_A"], rel=1e-5)


def test_cost_summary_median_after_the_first_epoch():
    from mmlwf.analysis.compare import cost_summary

    h = pd.DataFrame({"epoch": [1, 2, 3, 4], "train_structures_per_s": [10.0, 100.0, 300.0, 200.0],
                      "train_atoms_per_s": [50.0, 500.0, 1500.0, 1000.0], "padding_efficiency": [0.5, 0.8, 0.9, 0.7],
                      "xla_compilations": [3, 4, 4, 5]})
    assert cost_summary(h) == {"train_structures_per_s": 200.0, "train_atoms_per_s": 1000.0,
                               "padding_efficiency": pytest.approx(0.8), "xla_compilations": 5}
    assert cost_summary(h.iloc[:1]) == {"train_structures_per_s": 10.0, "train_atoms_per_s": 50.0,
                                        "padding_efficiency": 0.5, "xla_compilations": 3}
    assert cost_summary(h[["epoch"]]) == dict.fromkeys(
        ("train_structures_per_s", "train_atoms_per_s", "padding_efficiency", "xla_compilations"))


def _comparison_rows(text: str) -> list[list[tuple[str, str]]]:
    """Rows of the report's comparison table: ``[(tag, class, text), ...]`` per row."""
    table = re.search(r'<table class="comparison">(.*?)</table>', text, re.S).group(1)
    out = []
    for row in re.findall(r"<tr[^>]*>(.*?)</tr>", table, re.S):
        cells = re.findall(r'<(td|th)(?: class="(\w+)")?[^>]*>(.*?)</\1>', row, re.S)
        out.append([(tag, cls, html_lib.unescape(re.sub(r"<[^>]+>", "", body))) for tag, cls, body in cells])
    return out


def test_report_comparison_leads_with_errors_in_field_units(runs, tmp_path):
    from mmlwf.analysis.report import ABSENT, write_report

    evaluated, bare = runs
    evaluated = _as_old_run(evaluated, tmp_path / "old" / "evaluated")  # its cost: "—"
    fast = _with_history_columns(bare, tmp_path / "fast", train_structures_per_s=[40.0, 123.5],
                                 train_atoms_per_s=[160.0, 494.0], padding_efficiency=[0.5, 0.625],
                                 xla_compilations=[4, 5])
    text = write_report([evaluated, fast], tmp_path / "r.html").read_text()
    rows = _comparison_rows(text)
    assert [c[2] for c in rows[0]] == ["", "evaluated", "fast"]
    assert rows[1][0][0] == "th" and rows[1][0][2].startswith("Errors (lower is better")
    assert rows[2][0][2] == "Energy MAE (meV)" and rows[3][0][2] == "Energy RMSE (meV)"
    assert rows[4][0][2] == "Energy per atom MAE (meV/atom)" and rows[5][0][2] == "Forces MAE (meV/Å)"
    labels = [r[0][2] for r in rows]
    assert "Dipole MAE (D)" in labels and not any("eV" in x and "meV" not in x for x in labels)
    assert labels.index("Cost (throughput: median over the epochs after the first)") > labels.index("errors from")
    assert labels.index("Model (model.*)") > labels.index("XLA compilations")
    assert labels.index("learning_rate") > labels.index("features")
    # best (lowest) value of every error row marked, and only there
    t = pd.read_csv(io.StringIO(_compare_csv(evaluated, fast, tmp_path)))
    for row in rows[2:labels.index("errors from")]:
        column = {"Energy MAE (meV)": "energy_mae_meV", "Forces MAE (meV/Å)": "forces_mae_meV_per_A"}.get(row[0][2])
        marked = [cls == "best" for _, cls, _ in row[1:]]
        have = sum(text != ABSENT for _, _, text in row[1:])
        assert sum(marked) == (1 if have > 1 else 0), row  # nothing to compare with one value
        if column:
            assert marked.index(True) == int(np.argmin(t[column].to_numpy())), row
    assert 'class="best"' not in text.split("errors from")[1]  # no marks outside the errors
    # throughput, padding and compilations: shown where history.csv has them, "—" where not
    by_label = {r[0][2]: [c[2] for c in r[1:]] for r in rows}
    assert by_label["training throughput (structures/s)"] == [ABSENT, "123.5"]
    assert by_label["training throughput (atoms/s)"] == [ABSENT, "494"]
    assert by_label["batch padding efficiency (% real atoms)"] == [ABSENT, "62.5"]
    assert by_label["XLA compilations"] == [ABSENT, "5"]
    section = text.split('id="run-fast"')[1]
    assert "<td>training throughput (structures/s)</td><td>123.5</td>" in section
    assert f"<td>XLA compilations</td><td>{ABSENT}</td>" in text.split('id="run-evaluated"')[1].split("</table>")[0]


def _compare_csv(a: Path, b: Path, tmp_path: Path) -> str:
    assert main(["compare", str(a), str(b), "-o", str(tmp_path / "c.csv")]) == 0
    return (tmp_path / "c.csv").read_text()


def test_compare_csv_carries_the_cost_columns(runs, tmp_path):
    _, bare = runs
    fast = _with_history_columns(bare, tmp_path / "fast", train_structures_per_s=[40.0, 123.5],
                                 train_atoms_per_s=[160.0, 494.0], padding_efficiency=[0.5, 0.625],
                                 xla_compilations=[4, 5])
    old = _as_old_run(bare, tmp_path / "old" / "bare")
    t = pd.read_csv(io.StringIO(_compare_csv(old, fast, tmp_path)))
    assert t["train_structures_per_s"].isna().tolist() == [True, False]
    assert t["train_structures_per_s"].iloc[1] == 123.5 and t["xla_compilations"].iloc[1] == 5
    assert t["padding_efficiency"].iloc[1] == 0.625


# ----------------------------------------------------------------------------- figures


def _drawn(fig):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig).draw()
    return fig


def _molecules(compositions, element_e, conf, seed=0):
    """A prediction dict of structures with the given compositions (lists of Z), energies
    ``sum of element_e + conf`` (eV) and predictions off by 20 meV (alternating sign)."""
    Z = np.concatenate([np.asarray(c) for c in compositions])
    n = np.array([len(c) for c in compositions])
    E = np.array([sum(element_e[z] for z in c) for c in compositions]) + conf
    return {"Z": Z, "n_atoms": n, "offsets": np.concatenate([[0], np.cumsum(n)]), "E_ref": E,
            "E_pred": E + 0.02 * (-1.0) ** np.arange(len(n)), "index": np.arange(len(n))}


def test_energy_parity_relative_to_fitted_element_energies():
    from mmlwf.analysis.energy_fit import fitted_element_energies, relative_energies
    from mmlwf.analysis.plots import energy_parity_figure

    element_e = {1: -13.6, 6: -1030.2, 7: -1485.9, 8: -2041.7}
    shapes = [[8, 1, 1], [7, 1, 1, 1], [6, 1, 1, 1, 1], [6, 8, 1, 1, 1, 1], [6, 8, 1, 1]]
    rng = np.random.default_rng(0)
    compositions = [shapes[i % len(shapes)] for i in range(60)]
    conf = rng.normal(0.0, 0.15, len(compositions))
    pred = _molecules(compositions, element_e, conf)
    fit = fitted_element_energies(pred["Z"], pred["offsets"], pred["E_ref"])
    assert set(fit) == {1, 6, 7, 8}
    for z, e in element_e.items():
        assert fit[z] == pytest.approx(e, abs=0.1)
    counts = np.array([[c.count(z) for z in (1, 6, 7, 8)] for c in compositions], float)
    coef, *_ = np.linalg.lstsq(counts, pred["E_ref"], rcond=None)  # the fit by hand
    ref, new, _ = relative_energies(pred)
    np.testing.assert_allclose(ref, pred["E_ref"] - counts @ coef, atol=1e-9)
    np.testing.assert_allclose(new - ref, pred["E_pred"] - pred["E_ref"], atol=1e-9)  # errors unchanged
    assert np.ptp(ref) < 1.5 and np.ptp(pred["E_ref"]) > 1000  # total energies span > 1 keV
    fig = _drawn(energy_parity_figure(pred))
    ax = fig.axes[0]
    np.testing.assert_allclose(ax.collections[0].get_offsets(), np.column_stack([ref, new]), atol=1e-9)
    assert "fitted element energies" in ax.get_xlabel() and "fitted element energies" in ax.get_ylabel()
    assert "MAE 20 meV" in ax.texts[0].get_text()  # a 20 meV error shows
    lo, hi = ax.get_xlim()
    assert hi - lo < 2.0  # the scale of the conformational energies, so 20 meV is visible


def test_energy_parity_of_one_molecule_has_plain_axes():
    from mmlwf.analysis.plots import energy_parity_figure

    conf = np.random.default_rng(1).normal(0.0, 0.05, 30)
    pred = _molecules([[6, 8, 1, 1]] * 30, {1: -13.6, 6: -1030.2, 8: -2041.7}, conf - 4209.0 + 3098.8)
    fig = _drawn(energy_parity_figure(pred))
    ax = fig.axes[0]
    for axis in (ax.xaxis, ax.yaxis):
        assert axis.get_major_formatter().get_offset() == ""
        labels = [t.get_text() for t in axis.get_ticklabels()]
        assert labels and not any("e" in x or "×" in x for x in labels), labels
    x = ax.collections[0].get_offsets()[:, 0]
    np.testing.assert_allclose(x, pred["E_ref"] - pred["E_ref"].mean(), atol=1e-9)  # one molecule: minus the mean


def test_energy_parity_of_a_trained_multi_molecule_run(trained_multi, tmp_path):
    from mmlwf.analysis.energy_fit import relative_energies
    from mmlwf.analysis.evaluate import evaluate_run
    from mmlwf.analysis.plots import energy_parity_figure

    doc, pred = evaluate_run(trained_multi.run, trained_multi.data, trained_multi.split)
    assert len(set(pred["n_atoms"].tolist())) == 3  # three molecules
    ref, new, fit = relative_energies(pred)
    assert np.ptp(pred["E_ref"]) > 50 * np.ptp(ref)  # composition dominates the total energies
    ax = _drawn(energy_parity_figure(pred)).axes[0]
    np.testing.assert_allclose(ax.collections[0].get_offsets(), np.column_stack([ref, new]), atol=1e-9)
    mae = 1e3 * doc["metrics"]["energy_mae_eV"]
    assert f"MAE {mae:.4g} meV" in ax.texts[0].get_text()


def test_untrained_and_enforced_terms_are_not_plotted(trained_multi, trained_dcmnet):  # noqa: F811
    from mmlwf.analysis.plots import curve_terms, learning_curves_figure
    from mmlwf.analysis.quantities import run_training_config, term_weights
    from mmlwf.rundir import RunDir

    def read_history(run_dir):
        return RunDir(run_dir).history_frame()

    history = read_history(trained_multi.run)
    assert "valid_mono_mae_e" in history and "valid_charge_mae_e" in history  # recorded, yet ...
    training = run_training_config(trained_multi.run)
    assert training["mono_weight"] == 0 and training["charge_weight"] > 0
    weights = term_weights(training)
    shown, left = curve_terms(history, weights)
    assert list(shown) == ["loss", "energy", "forces", "dipole"]
    assert left["mono"].startswith("not trained") and left["charge"].startswith("enforced by the model")
    fig = learning_curves_figure(history, weights, ema=True)
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert titles == ["loss", "energy", "forces", "dipole"]
    note = fig._supxlabel.get_text()
    assert "atomic charges, not trained" in note and "total charge, enforced" in note and "EMA" in note
    assert "EMA" not in learning_curves_figure(history, weights, ema=False)._supxlabel.get_text()
    # a trained atomic-charge term (DCMNet with mono_weight 1) is plotted, under its chemical name
    dcm = trained_dcmnet.run
    shown, _ = curve_terms(read_history(dcm), term_weights(run_training_config(dcm)))
    assert "mono" in shown
    titles = [ax.get_title() for ax in learning_curves_figure(read_history(dcm),
                                                              term_weights(run_training_config(dcm))).axes]
    assert "atomic charges" in titles and "mono" not in titles


def test_histograms_count_in_integers():
    from mmlwf.analysis.plots import error_histogram_figure

    rng = np.random.default_rng(0)
    pred = {"E_ref": np.zeros(7), "E_pred": rng.normal(0, 0.01, 7), "F_ref": np.zeros((4, 3)),
            "F_pred": rng.normal(0, 0.05, (4, 3)), "D_ref": np.zeros((7, 3)), "D_pred": rng.normal(0, 0.1, (7, 3))}
    fig = _drawn(error_histogram_figure(pred))
    assert len(fig.axes) == 3
    for ax in fig.axes:
        assert ax.get_ylabel() == "count"
        ticks = [t for t in ax.get_yticks() if ax.get_ylim()[0] <= t <= ax.get_ylim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
    assert fig.axes[2].get_xlabel().endswith("(D)")


def test_captions_match_the_figures():
    text = {name: caption(name) for name in CAPTIONS}
    assert "fitted by least squares" in text["parity_energy.png"] and "meV" in text["parity_energy.png"]
    assert "moving average" in text["learning_curves.png"] and "meV" in text["learning_curves.png"] and "loss weight 0" in text["learning_curves.png"]
    assert "(D)" in text["error_histogram.png"] and "e·Å" not in text["error_histogram.png"]


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
    assert "Errors per element" in text and "ESP RMSE" in text
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
