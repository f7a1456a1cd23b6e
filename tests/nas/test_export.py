"""Export of a trained search: files, weights-only loading, ONNX, Pareto front, atomicity."""

import copy
import itertools
import json
import sys
from types import SimpleNamespace

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nas.family.export
from deploy import load_member
from nas.family.export import export_command, export_family, log_artifact
from nas.family.recalibrate import evaluate_member, recalibrate_bn, refit_classifiers
from nas.search import load_search
from supernet import SpaceError, SuperNet
from tests.conftest import synthetic_data as data

FAST = {"recal_batches": 2, "latency_repeats": 3, "progress": False}


@pytest.fixture(scope="module")
def trained(tiny_search):
    search, ckpt, _ = tiny_search
    return search, ckpt


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "family"
    result = export_family(trained[0], out, data(), members=3, samples=1,
                           budgets={"latency_ms": [1e9]}, **FAST)
    return result


def plain(obj) -> bool:
    """Only tensors, dicts, lists, strings and numbers (what weights-only loading allows)."""
    if isinstance(obj, dict):
        return all(isinstance(k, str) and plain(v) for k, v in obj.items())
    if isinstance(obj, list | tuple):
        return all(plain(v) for v in obj)
    return obj is None or isinstance(obj, str | int | float | bool | torch.Tensor)


def test_export_writes_every_file_and_they_load_weights_only(exported):
    out = exported.out
    names = [m.name for m in exported.family.members]
    assert len(names) >= 3
    family = torch.load(out / "family.pt", weights_only=True)
    assert plain(family)
    assert [m["name"] for m in family["members"]] == names
    assert family["table_id"] and family["space"]["name"] == "tiny"
    for m in family["members"]:
        assert m["state"] and all(isinstance(t, torch.Tensor) for t in m["state"].values())
    for name in names:
        mdir = out / "members" / name
        state = torch.load(mdir / "model.pt", weights_only=True)
        assert all(isinstance(t, torch.Tensor) for t in state.values())
        meta = json.loads((mdir / "config.json").read_text())
        assert meta["name"] == name and meta["config"] == exported.family[name].config.to_dict()
        assert meta["onnx"]["integer"] and meta["onnx"]["argmax_agreement"] >= 0.9
    assert (out / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp dirs


def test_integer_onnx_agrees_with_the_torch_member(exported):
    """The integer model rounds its accumulators where torch's fake quantization does not, so
    logits differ by about a quantization step; the predicted classes agree."""
    for m in exported.family.members:
        mdir = exported.out / "members" / m.name
        static = load_member(mdir)
        x = torch.randn(256, 1, 16, 16, generator=torch.Generator().manual_seed(7))
        got = ort.InferenceSession(str(mdir / "model.onnx")).run(None, {"input": x.numpy()})
        with torch.no_grad():
            want = [z.numpy() for z in static(x)]
        assert len(got) == len(want) == len(static.exit_stages)
        for g, w in zip(got, want, strict=True):
            assert (g.argmax(1) == w.argmax(1)).mean() >= 0.95
            assert np.abs(g - w).max() <= 0.25 * np.abs(w).max()


def test_pareto_json_describes_every_member(exported):
    doc = json.loads((exported.out / "pareto.json").read_text())
    records = doc["records"]
    members = [r for r in records if r["kind"] == "member"]
    assert [r["name"] for r in members] == [m.name for m in exported.family.members]
    assert [r["kind"] for r in records].count("sample") == 1
    for r in records:
        assert set(r) >= {"name", "config", "costs", "accuracy", "measured_latency_ms",
                          "on_front"}
        assert r["measured_latency_ms"] > 0 and all(0 <= a <= 1 for a in r["accuracy"])
        assert set(r["on_front"]) >= {"latency_ms", "macs", "measured_latency_ms"}
    for r in members:
        assert len(r["accuracy"]) == len(r["exit_costs"]["latency_ms"])
        assert r["onnx"]["argmax_agreement"] >= 0.9 and r["file_weight_bytes"] > 0
    for metric in records[0]["on_front"]:
        assert any(r["on_front"][metric] for r in records)
    assert doc["meta"]["budget_picks"] == exported.family.budget_picks


def test_a_config_outside_the_space_is_a_clear_error(trained, tmp_path):
    bad = trained[0].search_space.largest().replace(stage1__width=10)
    with pytest.raises(SpaceError, match=r"does not belong to the checkpoint's space.*width=10"):
        export_family(trained[0], tmp_path / "out", data(), configs=[bad], **FAST)
    assert not list(tmp_path.iterdir())


def test_a_crash_leaves_the_previous_export_and_no_temporary_files(trained, tmp_path,
                                                                    monkeypatch):
    out = tmp_path / "out"
    kw = {**FAST, "members": 2, "onnx": False, "latency_device": None}
    export_family(trained[0], out, data(), **kw)
    before = (out / "family.pt").read_bytes()
    real, calls = nas.family.export.evaluate_member, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("power cut")
        return real(*args, **kwargs)

    monkeypatch.setattr(nas.family.export, "evaluate_member", flaky)
    with pytest.raises(RuntimeError, match="power cut"):
        export_family(trained[0], out, data(), **kw)
    assert (out / "family.pt").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_artifact_is_logged_only_when_a_wandb_run_is_active(tmp_path, monkeypatch):
    logged = []

    class Artifact:
        def __init__(self, name, type, metadata):
            self.name, self.type, self.metadata, self.dirs = name, type, metadata, []

        def add_dir(self, path):
            self.dirs.append(path)

    fake = SimpleNamespace(run=None, Artifact=Artifact)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    assert not log_artifact(tmp_path, "family-tiny", {})
    fake.run = SimpleNamespace(log_artifact=logged.append)
    assert log_artifact(tmp_path, "family-tiny", {"table_id": "abc"})
    assert logged[0].type == "model" and logged[0].dirs == [str(tmp_path)]


def test_export_command_end_to_end(trained, tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["--ckpt", str(trained[1]), "--out", str(out), "--data", "synthetic", "--members",
            "2", "--budgets", "latency_ms=1000", "--recal-batches", "1", "--test-batches", "1",
            "--latency-repeats", "3", "--no-onnx", "--no-progress", "--finetune", "m0",
            "--finetune-steps", "2"]
    assert export_command(argv) == 0
    text = capsys.readouterr().out
    assert "m0" in text and "acc@1" in text
    family = torch.load(out / "family.pt", weights_only=True)
    top = family["members"][-1]["name"]
    shipped = load_search(trained[1]).shipped().to_dict()  # the search's own member is in it
    member = next(m for m in family["members"] if m["config"] == shipped)
    assert family["budget_picks"] == {"latency_ms<=1000": top, "shipped": member["name"]}
    n = len(family["members"])
    assert n in (2, 3)  # two spread members, plus the shipped one unless it is one of them
    last = text.strip().splitlines()[-1]  # the line read first: each budget's pick
    assert last.startswith(f"export: {n} members in ") and f"latency_ms<=1000 → {top} (" in last
    assert f"shipped {member['name']} (acc " in last
    assert " s CPU of fine-tuning); picked " in last and "; own weights: m0 (" in last
    configs = tmp_path / "bad.json"
    configs.write_text(json.dumps([{"stage1.width": 10}]))
    from nas.cli import main

    assert main(["export", *argv, "--configs", str(configs), "--out", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err.strip()
    assert "does not belong" in err and len(err.splitlines()) == 1


def test_recalibration_is_a_cumulative_average_and_restores_the_mode():
    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3)).eval()
    net[1].running_mean.fill_(5.0)
    batches = [(torch.randn(4, 1, 6, 6) + i, None) for i in range(3)]
    recalibrate_bn(net, batches, num_batches=2)
    with torch.no_grad():
        means = [net[0](x).mean((0, 2, 3)) for x, _ in batches[:2]]
    assert torch.allclose(net[1].running_mean, (means[0] + means[1]) / 2, atol=1e-5)
    assert net[1].momentum == 0.1 and not net.training
    with pytest.raises(ValueError, match="no batches"):
        recalibrate_bn(net, [], 1)


class TwoExits(nn.Module):
    """An extracted member's shape: a body, and heads ending in a linear classifier."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 6, 3), nn.BatchNorm2d(6), nn.ReLU())
        self.heads = nn.ModuleDict({
            "1": nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(6, 3)),
            "2": nn.Sequential(nn.Conv2d(6, 4, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(1),
                               nn.Linear(4, 3))})

    def forward(self, x):
        x = self.body(x)
        return [h(x) for h in self.heads.values()]


def refit_objective(model, batches, pull, shared):
    """The refit's objective per exit, recomputed from the model's own forward."""
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    fcs = [h[-1] for h in model.heads.values()]
    with torch.enable_grad():
        out = []
        for logits, fc, old in zip(model(x), fcs, shared, strict=True):
            loss = F.cross_entropy(logits, y) + pull * sum(
                (p - q).square().sum() for p, q in zip(fc.parameters(), old, strict=True))
            grads = torch.autograd.grad(loss, list(fc.parameters()))
            out.append((loss.item(), max(g.abs().max().item() for g in grads)))
    return out


def test_classifier_refit_reaches_the_optimum_and_changes_nothing_else():
    """Convex in the classifier: at the refit's end its objective's gradient vanishes (checked
    on the model's own forward, not the refit's cached features), the objective fell, and
    every other tensor — the body, BN statistics, the second head's conv — is untouched."""
    torch.manual_seed(0)
    model = TwoExits().eval()
    batches = [(torch.randn(16, 1, 6, 6), torch.randint(0, 3, (16,))) for _ in range(4)]
    shared = [[p.detach().clone() for p in h[-1].parameters()] for h in model.heads.values()]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    start = refit_objective(model, batches[:3], 1e-3, shared)
    refit_classifiers(model, batches, num_batches=3, pull=1e-3)
    end = refit_objective(model, batches[:3], 1e-3, shared)
    for (l0, _), (l1, grad) in zip(start, end, strict=True):
        assert l1 < l0 and grad < 1e-3
    after = model.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved == {"heads.1.2.weight", "heads.1.2.bias", "heads.2.3.weight", "heads.2.3.bias"}
    assert not model.training
    with pytest.raises(ValueError, match="no batches"):
        refit_classifiers(model, [], 1)


def test_a_negative_classifier_batch_count_is_refused_before_any_work(tiny_space):
    with pytest.raises(ValueError, match=r"0 \(keep the shared classifiers\) or more, got -1"):
        evaluate_member(SuperNet(tiny_space), tiny_space.smallest(), [], [],
                        classifier_batches=-1)


def test_a_strong_pull_keeps_the_shared_classifier():
    torch.manual_seed(1)
    model = TwoExits().eval()
    batches = [(torch.randn(16, 1, 6, 6), torch.randint(0, 3, (16,)))]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    refit_classifiers(model, batches, num_batches=1, pull=1e6)
    for k, v in model.state_dict().items():
        assert torch.allclose(v, before[k], atol=1e-5), k


@pytest.mark.slow
def test_quickstart_fast_smoke_run(tmp_path, capsys):
    from nas.quickstart import quickstart_command

    argv = ["--fast", "--out", str(tmp_path), "--members", "3", "--latency-repeats", "3",
            "--no-progress"]
    assert quickstart_command(argv) == 0
    assert (tmp_path / "export" / "family.pt").is_file()
    assert (tmp_path / "search.ckpt").is_file() and (tmp_path / "alpha.json").is_file()
    out = capsys.readouterr().out
    assert "front" in out
    last = out.strip().splitlines()[-1]  # what ships against what was asked, read first
    assert last.startswith("quickstart: shipped member meets its budget: latency_ms "), last
    ratio = float(last.split("(")[1].split("x")[0])
    assert ratio <= 1.0, last  # a ceiling is never exceeded by what ships


# -- members fine-tuned on their own copy ------------------------------------------------------
@pytest.fixture(scope="module")
def tuned(trained, tmp_path_factory):
    search = trained[0]
    probe = export_family(search, tmp_path_factory.mktemp("names") / "f", data(), members=3,
                          onnx=False, latency_device=None, **{**FAST, "latency_repeats": 1})
    cheapest = probe.family.members[0].name
    out = tmp_path_factory.mktemp("tuned") / "family"
    result = export_family(search, out, data(), members=3, finetune=[cheapest],
                           finetune_steps=8, finetune_lr=0.2, **FAST)
    return result, cheapest


def kl(logits, teacher_logits):
    """KL(teacher ‖ student) per sample, averaged: 0 when the student matches its teacher."""
    return F.kl_div(F.log_softmax(logits, -1), F.log_softmax(teacher_logits, -1),
                    log_target=True, reduction="batchmean")


def test_finetune_trains_a_copy_per_member_toward_the_teacher_and_leaves_the_shared_net(
        trained):
    from nas.family.finetune import finetune_members

    torch.manual_seed(0)  # the loaders' shuffles: the same batches whatever ran before
    net, space = trained[0].net, trained[0].search_space
    before = {k: v.clone() for k, v in net.state_dict().items()}
    dm = data()
    teacher = evaluate_member(net, space.largest(), dm.weights_dataloader(),
                              dm.test_dataloader(), recal_batches=2, test_limit=1,
                              latency_device=None).module.eval()
    small, large = space.smallest(), space.largest()
    own = finetune_members(net, [small, large], teacher, dm.weights_dataloader(), steps=30,
                           lr=0.2)
    assert all(torch.equal(net.state_dict()[k], v) for k, v in before.items())
    assert len({id(net), *map(id, own)}) == 3 and not teacher.training

    def loss(weights, config):  # train-mode BN (batch statistics), on a copy: nothing moves
        probe = copy.deepcopy(weights).train()
        with torch.no_grad():
            return sum(kl(probe(x, config)[-1], teacher(x)[-1])
                       for x, _ in itertools.islice(dm.weights_dataloader(), 4))

    for tuned, config in zip(own, [small, large], strict=True):
        assert loss(tuned, config) < 0.6 * loss(net, config)
    # each copy trained its own member: the small one's copy did not train the large config
    assert loss(own[0], large) > loss(own[1], large)


def test_a_finetuned_member_ships_all_its_weights_and_runs_as_it_was_scored(tuned, trained):
    from deploy import FamilyRuntime, member_state

    result, name = tuned
    family = torch.load(result.out / "family.pt", weights_only=True)
    runtime = FamilyRuntime.load(result.out / "family.pt")
    x = torch.randn(64, 1, 16, 16, generator=torch.Generator().manual_seed(3))
    for m in family["members"]:
        runtime.set_member(m["name"])
        static = load_member(result.out / "members" / m["name"])
        with torch.no_grad():  # the family file and the standalone member file agree
            assert all(torch.equal(a, b) for a, b in zip(runtime(x), static(x), strict=True))
        if m["name"] == name:
            assert set(m["state"]) == set(static.state_dict())  # every tensor its own
        else:
            assert set(m["state"]) == set(member_state(static))  # statistics and classifiers
    record = next(r for r in result.records if r["name"] == name)
    assert record["kind"] == "tuned" and record["finetune_steps"] == 8
    assert result.finetuned == [name] and result.finetune_cpu_s > 0
    assert sum(r["kind"] == "tuned" for r in result.records) == 1
    meta = json.loads((result.out / "pareto.json").read_text())["meta"]
    assert meta["finetuned"] == [name] and meta["finetune_cpu_s"] == result.finetune_cpu_s
    # its weights are not the shared ones: the same config from the shared net differs
    dm = data()
    shared = evaluate_member(trained[0].net, runtime.infos[name].config, dm.weights_dataloader(),
                             dm.test_dataloader(), recal_batches=2, test_limit=1,
                             latency_device=None).module
    runtime.set_member(name)
    with torch.no_grad():
        assert not torch.allclose(runtime(x)[-1], shared(x)[-1], atol=1e-3)


def test_a_finetuned_member_lowers_to_an_integer_model_that_agrees(tuned):
    result, name = tuned
    mdir = result.out / "members" / name
    meta = json.loads((mdir / "config.json").read_text())
    assert meta["kind"] == "tuned" and meta["onnx"]["integer"]
    assert meta["onnx"]["argmax_agreement"] >= 0.9
    static = load_member(mdir)
    x = torch.randn(256, 1, 16, 16, generator=torch.Generator().manual_seed(7))
    got = ort.InferenceSession(str(mdir / "model.onnx")).run(None, {"input": x.numpy()})
    with torch.no_grad():
        want = static(x)[-1].numpy()
    assert (got[-1].argmax(-1) == want.argmax(-1)).mean() >= 0.9


@pytest.mark.parametrize("kw, message", [
    ({"finetune": ["nope"]}, r"--finetune: nope not in the family; its members are m0"),
    ({"finetune": ["TOP"]}, r"--finetune: m\d is the dearest member, the teacher"),
    ({"finetune": ["m0"], "finetune_steps": 0}, r"--finetune-steps: must be at least 1, got 0"),
])
def test_bad_finetune_options_are_refused_before_any_work(trained, tmp_path, monkeypatch, kw,
                                                         message):
    def never(*args, **kwargs):
        raise AssertionError("evaluated a member before checking the options")

    monkeypatch.setattr(nas.family.export, "evaluate_member", never)
    if kw["finetune"] == ["TOP"]:
        from nas.family.chain import family_from_search

        family = family_from_search(trained[0], trained[0].table, members=2)
        kw = {"finetune": [max(family.members, key=lambda m: m.costs["latency_ms"]).name]}
    with pytest.raises(ValueError, match=message):
        export_family(trained[0], tmp_path / "out", data(), members=2, **FAST, **kw)
    assert not (tmp_path / "out").exists()
