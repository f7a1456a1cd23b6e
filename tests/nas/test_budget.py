import pytest
import torch

from costmodels import CostTable, ExpectedCost
from nas.arch_params import ArchParameters
from nas.budget import BudgetLoss, BudgetSpec, cheapest_config


@pytest.fixture
def expected(tiny_space, tiny_table):
    return ExpectedCost(tiny_space, CostTable.load(tiny_table), "latency_ms")


def test_budget_term_alone_gives_alpha_a_gradient(tiny_space, expected):
    """A penalty computed from Python floats would steer nothing; this one must."""
    for kind in ("lagrangian", "hinge", "fbnet"):
        alpha = ArchParameters(tiny_space)
        budget = BudgetLoss(BudgetSpec(fraction=0.2, loss=kind), tiny_space, expected)
        probs = alpha.distribution("softmax")
        _, ratio = budget.ratio(probs)
        budget.penalty(torch.tensor(1.0), ratio).backward()
        grads = [alpha.logits(k).grad for k in ("stage1.width", "stage2.width", "stage1.depth")]
        assert all(g is not None and g.abs().sum() > 0 for g in grads), kind
        # pushing toward cheaper: the gradient raises the narrowest width's logit
        assert alpha.logits("stage2.width").grad[0] < 0, kind


def test_infeasible_budget_is_an_error_with_both_costs(tiny_space, expected):
    smallest = expected.concrete(tiny_space.smallest())
    largest = expected.concrete(tiny_space.largest())
    with pytest.raises(ValueError) as err:
        BudgetLoss(BudgetSpec(target=smallest * 0.5, fraction=None), tiny_space, expected)
    assert "infeasible" in str(err.value)
    assert f"{smallest:.6g}" in str(err.value) and f"{largest:.6g}" in str(err.value)
    with pytest.warns(UserWarning, match="will not constrain"):
        BudgetLoss(BudgetSpec(fraction=1.5), tiny_space, expected)
    with pytest.raises(ValueError, match="give a target .* or a fraction"):
        BudgetLoss(BudgetSpec(target=None, fraction=None), tiny_space, expected)
    both = BudgetLoss(BudgetSpec(target=smallest * 2, fraction=0.9), tiny_space, expected)
    assert both.budget == pytest.approx(smallest * 2)  # an explicit target wins


def test_cheapest_member_is_found_when_small_choices_are_not_cheapest(tiny_space):
    """On a CPU table float activations are cheaper than fake-quantized ones."""
    def cost(arch):  # smaller widths cheaper, but 32-bit activations cheapest
        return sum(arch[f"stage{i}.width"] + (0 if arch[f"stage{i}.abits"] == 32 else 50)
                   for i in (1, 2))

    best = cheapest_config(tiny_space, cost)
    assert best["stage1.abits"] == best["stage2.abits"] == 32
    assert best["stage1.width"] == tiny_space.smallest()["stage1.width"]
    assert cost(best) < cost(tiny_space.smallest())


def test_lagrange_multiplier_follows_dual_ascent(tiny_space, expected):
    b = BudgetLoss(BudgetSpec(fraction=0.5, weight=1.0, dual_lr=0.5), tiny_space, expected)
    b.dual_update(torch.tensor(1.4))  # 40% over budget
    assert float(b.lam) == pytest.approx(1.2)
    b.dual_update(torch.tensor(0.2))  # far under: λ falls, never below zero
    assert float(b.lam) == pytest.approx(0.8)
    for _ in range(5):
        b.dual_update(torch.tensor(0.2))
    assert float(b.lam) == 0.0
    target = BudgetLoss(BudgetSpec(fraction=0.5, weight=0.0, dual_lr=0.5, equality=True),
                        tiny_space, expected)
    target.dual_update(torch.tensor(0.6))  # under a target budget: λ < 0 pushes the cost up
    assert float(target.lam) == pytest.approx(-0.2)
    assert float(target.penalty(torch.tensor(1.0), torch.tensor(0.6))) > 0


def test_penalty_forms(tiny_space, expected):
    task = torch.tensor(2.0)
    hinge = BudgetLoss(BudgetSpec(fraction=0.5, loss="hinge", weight=3.0), tiny_space, expected)
    assert float(hinge.penalty(task, torch.tensor(0.9))) == 0.0
    assert float(hinge.penalty(task, torch.tensor(1.5))) == pytest.approx(1.5)
    fbnet = BudgetLoss(BudgetSpec(fraction=0.5, loss="fbnet", weight=0.7), tiny_space, expected)
    on_budget = task + fbnet.penalty(task, torch.tensor(1.0, dtype=torch.float64))
    assert float(on_budget) == pytest.approx(2.0 * 0.7)  # CE·α at E = B
    assert float(fbnet.penalty(task, torch.tensor(2.0))) > float(fbnet.penalty(task,
                                                                               torch.tensor(1.0)))


def test_augmented_term_is_quadratic_and_one_sided_for_a_ceiling(tiny_space, expected):
    def penalty(ratio: float, **kw) -> tuple[float, float]:
        b = BudgetLoss(BudgetSpec(fraction=0.5, weight=1.0, rho=4.0, **kw), tiny_space, expected)
        r = torch.tensor(ratio, dtype=torch.float64, requires_grad=True)
        p = b.penalty(torch.tensor(1.0, dtype=torch.float64), r)
        p.backward()
        return float(p.detach()), float(r.grad)

    assert penalty(1.5) == pytest.approx((0.5 + 2 * 0.25, 1 + 4 * 0.5))
    assert penalty(0.5) == pytest.approx((-0.5, 1.0))  # a ceiling: no pull up from below
    assert penalty(0.5, equality=True) == pytest.approx((-0.5 + 2 * 0.25, 1 - 4 * 0.5))
    assert penalty(1.0, equality=True)[1] == pytest.approx(1.0)  # on budget: λ alone
    with pytest.raises(ValueError, match="budget.rho"):
        BudgetLoss(BudgetSpec(rho=-1.0), tiny_space, expected)


def settle(space, expected, rho: float, steps: int = 150) -> list[float]:
    """E/B − 1 over α steps under a task that always wants the largest choices (Adam on α,
    as the search runs it)."""
    torch.manual_seed(0)
    alpha = ArchParameters(space)
    budget = BudgetLoss(BudgetSpec(fraction=0.5, weight=0.0, dual_lr=0.2, rho=rho,
                                   equality=True), space, expected)
    opt = torch.optim.Adam(alpha.parameters(), lr=0.1, betas=(0.5, 0.999))
    gaps = []
    for _ in range(steps):
        opt.zero_grad()
        probs = alpha.probs()
        task = -sum((p * torch.linspace(0, 0.1, len(p))).sum() for p in probs.values())
        _, ratio = budget.ratio(probs)
        (task + budget.penalty(task, ratio)).backward()
        opt.step()
        budget.dual_update(ratio.detach())
        gaps.append(float(ratio.detach()) - 1)
    return gaps


def test_augmented_lagrangian_settles_on_the_budget_where_plain_dual_ascent_swings(
        tiny_space, expected):
    """Adam moves α at its learning rate whatever λ's size, so λ alone lags and overshoots
    (a limit cycle far around the budget); the quadratic term damps it."""
    damped = [abs(g) for g in settle(tiny_space, expected, rho=5.0)[-30:]]
    plain = [abs(g) for g in settle(tiny_space, expected, rho=0.0)[-30:]]
    assert max(damped) < 0.03
    assert sum(plain) / 30 > 3 * sum(damped) / 30
