"""The search end to end on the tiny space and synthetic data: budgets steer, resumes are exact."""

import pytest
import pytorch_lightning as L
import torch
import torch.nn.functional as F
from pytorch_lightning.callbacks import ModelCheckpoint

from nas.budget import BudgetSpec
from nas.callbacks import AlphaHistory
from nas.data.splits import SyntheticDataModule
from nas.search import SupernetSearch, load_search
from supernet import ArchConfig
from tests.conftest import TINY


def make_search(table: str, **kwargs) -> SupernetSearch:
    kwargs.setdefault("budget", BudgetSpec(fraction=0.15))
    kwargs.setdefault("warmup_epochs", 0)
    kwargs.setdefault("sandwich_random", 1)
    return SupernetSearch(space=TINY, cost_table=table, arch_lr=0.05, **kwargs)


def fit(module, root, epochs: int, ckpt_path=None, extra_callbacks=(), **trainer_kwargs
        ) -> L.Trainer:
    trainer = L.Trainer(
        max_epochs=epochs, accelerator="cpu", logger=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=root, deterministic=True,
        callbacks=[AlphaHistory(str(root)), *extra_callbacks],
        **trainer_kwargs)
    trainer.fit(module, SyntheticDataModule(num_samples=384, batch_size=32), ckpt_path=ckpt_path)
    return trainer


@pytest.mark.slow
def test_budget_steers_the_architecture(tiny_table, tmp_path):
    L.seed_everything(0)
    tight = make_search(tiny_table, budget=BudgetSpec(fraction=0.15))
    fit(tight, tmp_path / "tight", epochs=3)
    L.seed_everything(0)
    with pytest.warns(UserWarning, match="will not constrain"):
        loose = make_search(tiny_table, budget=BudgetSpec(fraction=1.0))
    fit(loose, tmp_path / "loose", epochs=3)
    runs = (("tight", tight), ("loose", loose))
    cost = {name: m.expected["latency_ms"].concrete(m.alpha.argmax()) for name, m in runs}
    belief = {name: float(m.expected["latency_ms"](m.alpha.probs())) for name, m in runs}
    assert cost["tight"] <= tight.budgets[0].budget
    assert cost["loose"] > cost["tight"]
    assert belief["loose"] > 1.5 * belief["tight"]
    assert (tmp_path / "tight" / "alpha.png").stat().st_size > 0


class RecordTemperatures(L.Callback):
    def __init__(self):
        self.seen = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.seen.append((module.tau, module.cost_tau, module.progress))


def test_temperatures_anneal_over_the_alpha_phase_batch_by_batch(tiny_table, tmp_path):
    module = make_search(tiny_table, warmup_epochs=1, tau_start=4.0, tau_end=0.5,
                         cost_tau_end=0.1, arch_entropy=0.1)
    record = RecordTemperatures()
    fit(module, tmp_path, epochs=3, limit_train_batches=4, extra_callbacks=[record])
    tau, cost_tau, progress = zip(*record.seen, strict=True)
    assert tau[:5] == (4.0,) * 5 and cost_tau[:5] == (1.0,) * 5  # warm-up, then the α phase
    assert tau[-1] == pytest.approx(0.5) and cost_tau[-1] == pytest.approx(0.1)
    assert progress[-1] == 1.0
    assert all(a > b for a, b in zip(tau[4:], tau[5:], strict=False))  # every batch, not epoch
    assert all(a > b for a, b in zip(cost_tau[4:], cost_tau[5:], strict=False))


class StopAfterFirstEpoch(L.Callback):
    """Ends the run after epoch 0 as a crash would, leaving only the epoch's last.ckpt."""

    def on_train_epoch_end(self, trainer, module):
        trainer.should_stop = True


@pytest.mark.slow  # seconds of training; CI runs the slow suite too
def test_kill_and_resume_gives_the_uninterrupted_result(tiny_table, tmp_path):
    L.seed_everything(0)
    straight = make_search(tiny_table, arch_entropy=0.1)
    fit(straight, tmp_path / "a", epochs=2)

    L.seed_everything(0)
    stopped = make_search(tiny_table, arch_entropy=0.1)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "b", save_last=True)
    fit(stopped, tmp_path / "b", epochs=2, extra_callbacks=[ckpt, StopAfterFirstEpoch()])
    assert stopped.current_epoch == 1
    L.seed_everything(123)  # the resumed process starts from an unrelated RNG state
    resumed = make_search(tiny_table, arch_entropy=0.1)
    fit(resumed, tmp_path / "c", epochs=2, ckpt_path=tmp_path / "b" / "last.ckpt")

    for key in straight.search_space.keys:
        assert torch.equal(straight.alpha.logits(key), resumed.alpha.logits(key)), key
    assert torch.equal(straight.budgets[0].lam, resumed.budgets[0].lam)
    for (name, p), q in zip(straight.net.state_dict().items(), resumed.net.state_dict().values(),
                            strict=True):
        assert torch.equal(p, q), name


def test_checkpoint_holds_space_table_and_alpha_and_loads_safely(tiny_table, tmp_path):
    module = make_search(tiny_table)
    t = fit(module, tmp_path, epochs=1, limit_train_batches=2)
    path = tmp_path / "x.ckpt"
    t.save_checkpoint(path)
    raw = torch.load(path, weights_only=True)
    assert raw["hwnas"]["space"] == module.search_space.spec
    assert raw["hwnas"]["table_id"] == module.table_id
    assert raw["hwnas"]["argmax"] == module.alpha.argmax().to_dict()
    loaded = load_search(path)
    assert loaded.alpha.argmax() == module.alpha.argmax()
    assert torch.equal(loaded.budgets[0].lam, module.budgets[0].lam)


def non_default_arguments(table: str) -> dict:
    """A value other than the default for every constructor argument of `SupernetSearch`."""
    return dict(
        space=TINY, cost_table=table,
        budget=BudgetSpec(fraction=0.3, loss="hinge", rho=2.0),
        extra_budgets=[BudgetSpec(metric="weight_bytes", target=20000.0)],
        relaxation="softmax", tau_start=4.0, tau_end=0.25, cost_tau_end=0.2, warmup_epochs=0,
        weight_optimizer="adamw", weight_lr=0.01, weight_decay=1e-4, arch_lr=0.02,
        arch_weight_decay=2e-3, arch_entropy=0.05, sandwich_random=1, label_smoothing=0.05,
        grad_clip=3.0, max_bad_steps=7, seed=11, compile=True, channels_last=False,
        alpha_trains_weights=False, sandwich_start=0.5, sandwich_draws="uniform",
        member_label_weight=0.5)


@pytest.mark.slow  # seconds of training; CI runs the slow suite too
def test_every_constructor_argument_survives_checkpoint_and_load(tiny_table, tmp_path):
    import inspect
    from dataclasses import asdict

    args = non_default_arguments(tiny_table)
    signature = inspect.signature(SupernetSearch.__init__).parameters
    assert set(args) == set(signature) - {"self"}, "a new argument needs a value here"
    for name, value in args.items():
        assert value != signature[name].default, name
    module = SupernetSearch(**args)
    trainer = fit(module, tmp_path, epochs=1, limit_train_batches=2, limit_val_batches=1)
    trainer.save_checkpoint(tmp_path / "x.ckpt")
    loaded = load_search(tmp_path / "x.ckpt")
    expected = {**args, "budget": asdict(args["budget"]),
                "extra_budgets": [asdict(b) for b in args["extra_budgets"]]}
    assert {k: loaded.hparams[k] for k in expected} == expected
    assert [b.spec for b in loaded.budgets] == [b.spec for b in module.budgets]
    assert [b.budget for b in loaded.budgets] == [b.budget for b in module.budgets]


@pytest.mark.slow  # seconds of training; CI runs the slow suite too
def test_same_seed_gives_the_same_search_whatever_the_global_rng(tiny_table, tmp_path):
    from costmodels.profile import torch_threads
    from nas.quickstart import run_search

    results = []
    for run, global_seed in enumerate((1, 2)):
        torch.manual_seed(global_seed)  # a different process state before each run
        with torch_threads(1):
            search, ckpt = run_search(TINY, tiny_table, SyntheticDataModule(num_samples=256),
                                      tmp_path / str(run), epochs=2, limit_train_batches=3,
                                      limit_val_batches=1, progress=False, seed=5,
                                      sandwich_random=2)
        results.append(torch.load(ckpt, weights_only=True)["state_dict"])
    a, b = results
    assert set(a) == set(b) and any(k.startswith("alpha.") for k in a)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_progress_bar_keeps_its_width_at_120_columns(tiny_table, tmp_path):
    from tqdm import tqdm

    trainer = fit(make_search(tiny_table), tmp_path, epochs=1, limit_train_batches=2,
                  limit_val_batches=1)
    metrics = trainer.progress_bar_metrics
    assert set(metrics) == {"loss", "gap", "acc"}
    assert {"train/loss_relaxed", "arch/budget_gap_latency_ms", "val/acc"} <= set(
        trainer.logged_metrics)
    postfix = "v_num=abcd, " + ", ".join(f"{k}={v:.3f}" for k, v in metrics.items())
    line = tqdm.format_meter(150, 329, 83.0, ncols=120, prefix="Epoch 12",
                             postfix=postfix, unit="it")
    assert len(line) <= 120 and line.count("█") + line.count(" ") >= 20, line


class CountHostReads(L.Callback):
    """Per training batch, the host's reads of a tensor's value (``aten::_local_scalar_dense``:
    ``.item()``, ``float(t)``, ``bool(t)``…), each a stall of an accelerator. Reads inside a
    fused optimizer's kernel are counted apart: on the CPU it reads its own step counter there,
    on CUDA that counter lives on the device."""

    def __init__(self):
        self.reads, self.in_optimizer = [], 0

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        from torch.profiler import ProfilerActivity, profile

        self.prof = profile(activities=[ProfilerActivity.CPU]).__enter__()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.prof.__exit__(None, None, None)
        reads = 0
        for e in self.prof.events():
            if e.name != "aten::_local_scalar_dense":
                continue
            parent = e.cpu_parent
            while parent is not None and not parent.name.startswith("aten::_fused_"):
                parent = parent.cpu_parent
            if parent is None:
                reads += 1
            else:
                self.in_optimizer += 1
        self.reads.append(reads)


@pytest.mark.parametrize("options", [
    {},
    pytest.param({"relaxation": "binary", "sandwich_random": 2, "arch_entropy": 0.1,
                  "budget": BudgetSpec(fraction=0.3, dual_signal="argmax", equality=True)},
                 marks=pytest.mark.slow),
    pytest.param({"relaxation": "gumbel_hard", "weight_optimizer": "adamw"},
                 marks=pytest.mark.slow),
])
def test_a_search_step_never_waits_for_the_device(tiny_table, tmp_path, options):
    count = CountHostReads()
    module = make_search(tiny_table, **options)
    fit(module, tmp_path, epochs=1, limit_train_batches=4, limit_val_batches=0,
        extra_callbacks=[count])
    assert len(count.reads) == 4 and count.in_optimizer > 0  # the profiler sees reads
    assert max(count.reads) == 0, count.reads  # was 58 per step on this space
    assert module.alpha.logits("stage1.width").abs().sum() > 0  # α did move


class Snapshot(L.Callback):
    def __init__(self):
        self.after = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        w_opt = trainer.optimizers[0]
        self.after.append((
            {k: v.clone() for k, v in module.state_dict().items()},
            [s["momentum_buffer"].clone() for s in w_opt.state.values() if s]))


def test_a_nan_step_changes_nothing_not_even_momentum_even_the_first(tiny_table, tmp_path):
    from tests.nas.test_reliability import PoisonedSearch

    PoisonedSearch.poison = {(0, 0)}
    module = PoisonedSearch(space=TINY, cost_table=tiny_table, warmup_epochs=0,
                            sandwich_random=1, budget=BudgetSpec(fraction=0.3))
    before = {k: v.clone() for k, v in module.state_dict().items()}
    snap = Snapshot()
    fit(module, tmp_path, epochs=1, limit_train_batches=3, limit_val_batches=0,
        extra_callbacks=[snap])
    (state0, momentum0), (state1, momentum1) = snap.after[:2]
    net = [k for k in before if k.startswith("net.") and before[k].is_floating_point()]
    # the weights step of batch 0 was skipped: no weight, BN statistic aside, moved
    assert all(torch.equal(before[k], state0[k]) for k in net if "running" not in k)
    assert all(torch.equal(m, torch.zeros_like(m)) for m in momentum0)
    # batch 1 steps from clean momentum: finite, and the weights move
    assert all(torch.isfinite(m).all() for m in momentum1)
    assert any(not torch.equal(state0[k], state1[k]) for k in net)
    assert module.bad_steps == 0 and int(module.skipped) == 1


def test_random_members_are_drawn_from_alpha_two_alpha_steps_back(tiny_space):
    from nas.arch_params import ArchParameters, LaggedProbs

    arch = ArchParameters(tiny_space)
    lagged = LaggedProbs(arch)
    seen = []
    for _ in range(4):
        seen.append(torch.cat(lagged.probs()))
        with torch.no_grad():  # an α step
            arch.logits("stage1.width")[0] += 1.0
        lagged.push()
    uniform = torch.cat(ArchParameters(tiny_space).host_probs())
    assert torch.equal(seen[0], uniform) and torch.equal(seen[1], uniform)
    with torch.no_grad():
        arch.logits("stage1.width")[0] -= 2.0  # α as it was after the first α step
    assert torch.equal(seen[3], torch.cat(arch.host_probs()))
    # the state round-trips: a resumed run draws the same members
    again = LaggedProbs(arch)
    again.load(lagged.state())
    gen = [torch.Generator().manual_seed(7) for _ in range(2)]
    assert arch.sample(gen[0], lagged.probs()) == arch.sample(gen[1], again.probs())


def test_draws_follow_the_probabilities(tiny_space):
    from nas.arch_params import ArchParameters

    arch = ArchParameters(tiny_space)
    key = "stage1.wbits"  # 4, 8 or 32 bits
    index = [d.key for d in tiny_space.decisions].index(key)
    probs = arch.host_probs()
    probs[index] = torch.tensor([0.7, 0.0, 0.3])
    gen = torch.Generator().manual_seed(0)
    choices = tiny_space.decision(key).choices
    counts = {c: 0 for c in choices}
    for _ in range(2000):
        counts[arch.sample(gen, probs)[key]] += 1
    expected = probs[index].tolist()
    for c, p in zip(choices, expected, strict=True):
        assert abs(counts[c] / 2000 - p) < 0.04, (counts, expected)
    assert counts[choices[1]] == 0  # a choice of probability 0 is never drawn


class Layouts(L.Callback):
    """Before each optimizer step: parameters whose gradient or state has another layout."""

    def __init__(self):
        self.mismatched, self.steps = [], 0

    def on_before_optimizer_step(self, trainer, module, optimizer):
        self.steps += 1
        for group in optimizer.param_groups:
            for p in group["params"]:
                tensors = [p.grad, *optimizer.state[p].values()]
                self.mismatched += [t.stride() for t in tensors if torch.is_tensor(t)
                                    and t.shape == p.shape and strides(t) != strides(p)]


def strides(t: torch.Tensor) -> tuple[int, ...]:
    """The strides that matter: a dimension of size 1 may have any."""
    return tuple(s for s, n in zip(t.stride(), t.shape, strict=True) if n > 1)


@pytest.mark.slow  # seconds of training; CI runs the slow suite too
def test_channels_last_trains_the_same_network(tiny_table, tmp_path):
    """The layout changes the speed, not the training. Fused steps read a parameter, its
    gradient and its momentum as one layout (torch does not check), so they must agree. In
    float64, so that no fake quantizer's rounding flips on a last bit (in float32 one flip
    moves a weight by 1e-3 after three steps): the two runs agree to rounding."""
    runs, layouts = {}, Layouts()
    for channels_last in (True, False):
        L.seed_everything(0)
        runs[channels_last] = make_search(tiny_table, channels_last=channels_last)
        fit(runs[channels_last], tmp_path / str(channels_last), epochs=1,
            limit_train_batches=3, limit_val_batches=1, precision="64-true",
            extra_callbacks=[layouts] if channels_last else [])
    convs = [p for p in runs[True].net.parameters() if p.dim() == 4]
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    assert all(p.dtype == torch.float64 for p in convs)
    assert layouts.steps == 6 and layouts.mismatched == []
    first, second = (runs[k].state_dict() for k in (True, False))
    trained = SupernetSearch(space=TINY, cost_table=tiny_table).state_dict()
    assert any(not torch.allclose(first[k].double(), v.double()) for k, v in trained.items()
               if k.startswith("net.") and v.is_floating_point())
    for key, value in first.items():
        assert torch.allclose(value.double(), second[key].double(), rtol=1e-9, atol=1e-12), key


class CountPasses(L.Callback):
    """Per training batch, the network's passes: relaxed ones and concrete members."""

    def __init__(self):
        self.passes = []

    def on_train_start(self, trainer, module):
        forward = module.net.forward

        def counted(x, arch):
            self.passes[-1].append("member" if isinstance(arch, ArchConfig) else "relaxed")
            return forward(x, arch)

        module.net.forward = counted

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.passes.append([])


SANDWICH = ["member"] * 4  # largest, smallest and two random members


@pytest.mark.parametrize(("options", "expected"), [
    ({}, [["relaxed", *SANDWICH]] * 4),  # the relaxed pass first (`_weights_step`)
    ({"alpha_trains_weights": False}, [["relaxed", *SANDWICH, "relaxed"]] * 4),
    ({"sandwich_start": 0.5}, [["relaxed", "member"]] * 2 + [["relaxed", *SANDWICH]] * 2),
    ({"warmup_epochs": 1},  # α frozen: the weights' own relaxed pass, in the same place
     [["relaxed", *SANDWICH]] * 4),
])
def test_the_schedule_options_cut_passes_and_still_train_both(tiny_table, tmp_path, options,
                                                              expected):
    count = CountPasses()
    module = make_search(tiny_table, sandwich_random=2, **options)
    epochs = 2 if options.get("warmup_epochs") else 1
    fit(module, tmp_path, epochs=epochs, limit_train_batches=4 // epochs, limit_val_batches=0,
        extra_callbacks=[count])
    assert count.passes == expected
    trained = SupernetSearch(space=TINY, cost_table=tiny_table).state_dict()
    after = module.state_dict()
    assert any(not torch.equal(after[k], v) for k, v in trained.items() if k.startswith("net."))
    assert module.alpha.logits("stage1.width").abs().sum() > 0
    assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())


def test_sandwich_start_must_be_a_share_of_the_run(tiny_table):
    with pytest.raises(ValueError, match="sandwich_start: a share of the run in"):
        make_search(tiny_table, sandwich_start=1.0)


def test_a_checkpoint_written_before_alpha_was_renamed_still_loads(tiny_table, tmp_path):
    """Checkpoints whose α is stored under ``arch.`` (its earlier name) load unchanged."""
    from costmodels.profile import torch_threads
    from nas.quickstart import run_search

    with torch_threads(1):
        search, ckpt = run_search(TINY, tiny_table, SyntheticDataModule(num_samples=256),
                                  tmp_path, epochs=1, limit_train_batches=2,
                                  limit_val_batches=1, progress=False)
    raw = torch.load(ckpt, weights_only=True)
    raw["state_dict"] = {("arch." + k.removeprefix("alpha.")) if k.startswith("alpha.") else k: v
                         for k, v in raw["state_dict"].items()}
    old = tmp_path / "old.ckpt"
    torch.save(raw, old)
    loaded = load_search(old)
    for key in search.alpha.space.decisions:
        assert torch.equal(loaded.alpha.logits(key.key), search.alpha.logits(key.key).cpu())


def test_the_joint_pass_trains_every_exit_and_prices_the_exit_exactly(tiny_table):
    """With ``alpha_trains_weights`` the α pass trains the weights as their own relaxed pass
    would (every exit's loss, however unlikely α makes that exit), while α's exit decision
    keeps the gradient of the exit-weighted loss."""
    torch.manual_seed(0)
    module = make_search(tiny_table, budget=BudgetSpec(fraction=0.5, loss="hinge"),
                         relaxation="softmax", alpha_trains_weights=True)
    with torch.no_grad():  # the first exit all but ruled out
        module.alpha.logits("exit").copy_(torch.tensor([-200.0, 0.0]))
    x, y = torch.randn(8, 1, 16, 16), torch.randint(0, 4, (8,))
    weights = [p for n, p in module.named_parameters() if n.startswith("net.")]
    exit_alpha = module.alpha.logits("exit")
    gen = torch.Generator()

    def grads(loss):
        return torch.autograd.grad(loss, [*weights, exit_alpha], allow_unused=True)

    *joint_w, joint_exit = grads(module.arch_loss(x, y, gen, trains_weights=True)[0])
    *alone_w, alone_exit = grads(module.arch_loss(x, y, gen)[0])
    *ref_w, _ = grads(module.task_loss(module.net(x, module.alpha.probs(module.tau)), y))
    first_head = [i for i, (n, _) in enumerate(module.named_parameters())
                  if n.startswith("net.heads.1.")]
    assert first_head
    for i in first_head:  # the unlikely exit learns in the joint pass, not in α's own
        assert joint_w[i].abs().sum() > 0 and alone_w[i].abs().sum() < 1e-9
    for got, want in zip(joint_w, ref_w, strict=True):
        assert (got is None) == (want is None)
        if got is not None:
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(joint_exit, alone_exit, rtol=1e-5, atol=1e-9)
    assert joint_exit.abs().sum() > 0


def test_uniform_draws_cover_the_space_whatever_alpha_says(tiny_table):
    """``sandwich_draws="uniform"`` ignores α: members α rules out are drawn too."""
    module = make_search(tiny_table, sandwich_draws="uniform")
    with torch.no_grad():  # α all but rules out the narrow stage-1 width
        module.alpha.logits("stage1.width").copy_(torch.tensor([-50.0, 0.0]))
    gen = torch.Generator().manual_seed(0)
    widths = [module.alpha.sample(gen, module.draw_probs())["stage1.width"] for _ in range(200)]
    assert 60 < widths.count(8) < 140  # about half: the narrow width, uniformly
    alpha_drawn = make_search(tiny_table)
    alpha_drawn.alpha.load_state_dict(module.alpha.state_dict())
    widths = [alpha_drawn.alpha.sample(gen, alpha_drawn.draw_probs())["stage1.width"]
              for _ in range(50)]
    assert widths.count(8) == 0  # softmax(α) never picks it
    with pytest.raises(ValueError, match="sandwich_draws: 'alpha' or 'uniform'"):
        make_search(tiny_table, sandwich_draws="both")


@pytest.mark.parametrize("weight", [0.0, 0.3, 1.0])
def test_member_loss_mixes_labels_into_the_distillation(tiny_table, weight):
    module = make_search(tiny_table, member_label_weight=weight)
    torch.manual_seed(0)
    logits = [torch.randn(6, 4), torch.randn(6, 4)]
    teacher, y = torch.softmax(torch.randn(6, 4), -1), torch.randint(0, 4, (6,))
    soft = sum(-(teacher * F.log_softmax(z, -1)).sum(-1).mean() for z in logits) / 2
    hard = sum(F.cross_entropy(z, y, label_smoothing=module.hparams.label_smoothing)
               for z in logits) / 2
    torch.testing.assert_close(module.member_loss(logits, teacher, y),
                               (1 - weight) * soft + weight * hard)
    with pytest.raises(ValueError, match=r"member_label_weight: a weight in \[0, 1\]"):
        make_search(tiny_table, member_label_weight=1.5)


def float_bits(space, probs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``probs`` with every bit-width decision certain of 32 bits: no rounding left, so two
    builds that sum in another order agree to float precision (one quantization level moved
    by an ulp would move a tiny network's logits by a percent)."""
    out = dict(probs)
    for d in space.decisions:
        if d.kind in ("wbits", "abits"):
            certain = F.one_hot(torch.tensor(d.choices.index(32)), len(d.choices))
            out[d.key] = certain.float().requires_grad_()
    return out


@pytest.mark.slow  # builds the compiled graph: about a minute on a small CPU
def test_compiled_relaxed_forward_equals_eager_and_alpha_does_not_recompile(tiny_table):
    """``compile=True`` runs the relaxed pass as one compiled graph: the logits and gradients
    of the eager network, and new probabilities (α moved) reuse the graph. The compiled
    quantizers are checked against the eager ones in ``tests/supernet/test_fused.py``."""
    module = make_search(tiny_table, compile=True).train()
    space = module.search_space
    torch.manual_seed(0)
    x = torch.randn(8, space.input_channels, space.input_size, space.input_size)
    weights = list(module.net.parameters())
    gen = torch.Generator().manual_seed(0)
    for draw in range(3):
        probs = float_bits(space, module.alpha.distribution("gumbel", 1.0, gen))
        got = []
        for forward in (module.net, module.relaxed_forward):
            with torch._dynamo.config.patch(error_on_recompile=draw > 0):
                logits = forward(x, probs)
            loss = sum(z.square().sum() for z in logits)
            got.append((logits, torch.autograd.grad(loss, weights + list(probs.values()),
                                                    allow_unused=True)))
        for a, b in zip(got[0][0], got[1][0], strict=True):
            assert (b - a).norm() <= 1e-5 * a.norm()
        for a, b in zip(got[0][1], got[1][1], strict=True):
            assert (a is None) == (b is None)
            if a is not None:
                assert (b - a).norm() <= 1e-3 * a.norm() + 1e-6  # float32 sums, other order


@pytest.mark.slow  # builds the compiled graph: about a minute on a small CPU
def test_compiled_search_steps_train_weights_and_alpha(tiny_table, tmp_path):
    """The default step with ``compile=True``: the compiled relaxed pass and the eager
    members share one backward (a compiled pass after the members voided their saved BN
    statistics: the backward raised)."""
    module = make_search(tiny_table, compile=True)
    before = {k: v.detach().clone() for k, v in module.state_dict().items()}
    fit(module, tmp_path, epochs=1, limit_train_batches=2, limit_val_batches=1)
    after = module.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith("alpha.") for k in changed)
    assert any(k.startswith("net.stages") and k.endswith("weight") for k in changed)
    assert module.compiled_relaxed is not None and module.bad_steps == 0
