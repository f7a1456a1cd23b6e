"""What the plots say: the budgets and picked members on the Pareto plot, the decision and its
lead on the α plot."""

import json

import pytest

from nas.callbacks import decision_title, plot_alpha
from nas.family.pareto import MEASURED, budget_lines, plot_pareto


def records():
    def rec(name, latency, measured, acc, budgets=()):
        return {"name": name, "kind": "member", "costs": {"latency_ms": latency},
                MEASURED: measured, "accuracy": [acc], "budgets": list(budgets)}
    return [rec("m0", 1.0, 0.4, 0.6), rec("m1", 2.0, 0.9, 0.7, ["latency_ms<=2.5"]),
            rec("m2", 3.0, 1.1, 0.8, ["latency_ms<=3", "weight_bytes<=9000"])]


def test_budget_lines_name_each_budget_and_its_member():
    assert budget_lines(records()) == {"latency_ms": [(2.5, "m1"), (3.0, "m2")],
                                       "weight_bytes": [(9000.0, "m2")]}


def test_pareto_plot_has_a_table_panel_and_a_measured_panel(tmp_path, monkeypatch):
    import matplotlib.figure

    saved = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig",
                        lambda fig, path, **kw: (saved.append(fig), open(path, "wb").close()))
    plot_pareto(records(), tmp_path / "p.png")
    (fig,) = saved
    labels = [ax.get_xlabel() for ax in fig.axes]
    assert labels == ["latency_ms from the cost table (the axis the budgets use)",
                      "latency measured on this machine (ms, batch 1)"]
    table_axis = fig.axes[0]
    budgets = [line.get_xdata()[0] for line in table_axis.lines if line.get_linestyle() == "--"]
    assert sorted(budgets) == [2.5, 3.0]
    texts = [t.get_text() for t in table_axis.texts]
    assert "latency_ms ≤ 2.5 → m1" in texts and "latency_ms ≤ 3 → m2" in texts


def test_decision_title_says_what_was_chosen_and_how_firmly():
    assert decision_title("stage2.width", (16, 24, 32), [0.30, 0.45, 0.25]) == \
        "stage2.width → 24  P 0.45, lead +0.15"


def test_alpha_plot_zooms_on_small_moves(tmp_path, tiny_space, monkeypatch):
    import matplotlib.figure

    saved = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig",
                        lambda fig, path, **kw: saved.append(fig))
    flat = {d.key: [1 / len(d.choices)] * len(d.choices) for d in tiny_space.decisions}
    moved = json.loads(json.dumps(flat))
    key = tiny_space.decisions[0].key
    moved[key] = [0.52, 0.48][: len(moved[key])] + moved[key][2:]
    plot_alpha([0, 10], [flat, moved], tiny_space, tmp_path / "a.png")
    ax = saved[0].axes[0]
    low, high = ax.get_ylim()
    assert high - low < 0.2 and low < 0.48 and high > 0.52
    assert ax.get_title().startswith(f"{key} → ")


@pytest.mark.parametrize("every", [1, 3])
def test_alpha_history_records_every_n_batches(tiny_table, tmp_path, every):
    import pytorch_lightning as L

    from nas.callbacks import AlphaHistory
    from nas.data.splits import SyntheticDataModule
    from tests.nas.test_search import make_search

    history = AlphaHistory(str(tmp_path), every_n_steps=every)
    trainer = L.Trainer(max_epochs=2, limit_train_batches=3, limit_val_batches=1,
                        accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False,
                        callbacks=[history])
    trainer.fit(make_search(tiny_table), SyntheticDataModule(num_samples=256, batch_size=32))
    assert history.steps == ([0, 1, 2, 3, 4, 5, 6] if every == 1 else [0, 3, 6])
    doc = json.loads((tmp_path / "alpha.json").read_text())
    assert doc["steps"] == history.steps and len(doc["probs"]) == len(history.steps)
    assert doc["probs"][0] != doc["probs"][-1]  # α moved, and the record shows it
