import json

import pytest

from costmodels import LinearCorrection, build_measured_table, check_fidelity
from costmodels.fidelity import agreement, sample_members


def test_fidelity_report_on_the_tiny_space(tiny, tmp_path):
    table = build_measured_table(tiny, "cpu", warmup=1, repeats=3, progress=False)
    report = check_fidelity(tiny, table, n_samples=4, fit_samples=4, warmup=1, repeats=3)
    json_path, png_path = report.save(tmp_path)
    data = json.loads(json_path.read_text())
    assert png_path.stat().st_size > 1000
    assert data["additive"]["n"] == 6  # 4 samples + largest + smallest
    assert data["corrected"] is not None and data["correction"] is not None
    test = {json.dumps(m["arch"], sort_keys=True) for m in data["test"]}
    fit = {json.dumps(m["arch"], sort_keys=True) for m in data["fit"]}
    assert not test & fit  # never fit on the test members
    assert "Kendall" in report.summary()


def test_samples_are_seeded_and_include_the_extremes(tiny):
    a = sample_members(tiny, 5, seed=3)
    assert a == sample_members(tiny, 5, seed=3)
    assert a[:2] == [tiny.largest(), tiny.smallest()] and len(set(a)) == 7


def test_correction_recovers_a_linear_law():
    pred, layers = [1.0, 2.0, 3.0, 5.0, 8.0], [10, 12, 11, 20, 25]
    meas = [1.2 * p + 0.01 * n + 0.3 for p, n in zip(pred, layers, strict=True)]
    corr = LinearCorrection.fit(pred, layers, meas)
    assert (corr.a, corr.b, corr.c) == pytest.approx((1.2, 0.01, 0.3))


def test_agreement_figures():
    a = agreement([1.0, 2.0, 3.3], [1.0, 2.0, 3.0])
    assert a.mape == pytest.approx(100 * 0.1 / 3)
    assert a.within_10pct == 1.0 and a.kendall_tau == pytest.approx(1.0)


def test_agreement_tau_is_tau_b_with_ties():
    """Against a direct count of concordant, discordant and tied pairs."""
    x, y = [1, 2, 3, 4, 5, 5, 7], [2, 1, 4, 3, 6, 6, 6]
    conc = disc = tied_x = tied_y = 0
    for i in range(len(x)):
        for j in range(i + 1, len(x)):
            dx, dy = (x[i] > x[j]) - (x[i] < x[j]), (y[i] > y[j]) - (y[i] < y[j])
            tied_x += dx == 0 and dy != 0
            tied_y += dy == 0 and dx != 0
            conc += dx * dy > 0
            disc += dx * dy < 0
    tau_b = (conc - disc) / ((conc + disc + tied_x) * (conc + disc + tied_y)) ** 0.5
    assert agreement(x, y).kendall_tau == pytest.approx(tau_b)
