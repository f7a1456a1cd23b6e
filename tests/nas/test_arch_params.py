import pytest
import torch

from costmodels import CostTable, ExpectedCost
from nas.arch_params import RELAXATIONS, ArchParameters


@pytest.fixture
def alpha(tiny_space):
    a = ArchParameters(tiny_space)
    with torch.no_grad():
        for p in a.parameters():
            p.copy_(torch.randn_like(p))
    return a


@pytest.mark.parametrize("relaxation", RELAXATIONS)
def test_every_relaxation_is_a_distribution_with_gradients(alpha, tiny_space, relaxation):
    probs = alpha.distribution(relaxation, tau=0.7, generator=torch.Generator().manual_seed(0))
    assert set(probs) == set(tiny_space.keys)
    weights = {k: torch.randn(len(p)) for k, p in probs.items()}
    sum((weights[k] * p).sum() for k, p in probs.items()).backward()
    for d in tiny_space.decisions:
        p = probs[d.key]
        assert torch.allclose(p.sum(), torch.tensor(1.0)) and (p >= -1e-6).all()
        if relaxation in ("gumbel_hard", "binary"):
            assert sorted(p.detach().tolist())[-1] == pytest.approx(1.0)  # one-hot forward
            assert p.detach().count_nonzero() == 1
        if len(d.choices) > 1:
            assert alpha.logits(d.key).grad.abs().sum() > 0, (relaxation, d.key)


def test_samples_depend_only_on_the_generator_seed(alpha):
    draw = [alpha.distribution("gumbel", 1.0, torch.Generator().manual_seed(5)) for _ in range(2)]
    for k in draw[0]:
        assert torch.equal(draw[0][k], draw[1][k])
    a = [alpha.sample(torch.Generator().manual_seed(3)) for _ in range(2)]
    assert a[0] == a[1]


def test_argmax_picks_the_largest_logit(tiny_space):
    a = ArchParameters(tiny_space)
    with torch.no_grad():
        a.logits("stage1.width")[0] = 3.0
        a.logits("stage2.wbits")[1] = 3.0
    arch = a.argmax()
    assert arch["stage1.width"] == tiny_space.decision("stage1.width").choices[0]
    assert arch["stage2.wbits"] == tiny_space.decision("stage2.wbits").choices[1]
    tiny_space.validate(arch)


def test_entropy_is_one_when_uniform_and_falls_when_decided(tiny_space):
    a = ArchParameters(tiny_space)
    assert all(h == pytest.approx(1.0) for h in a.entropy().values())
    with torch.no_grad():
        a.logits("stage1.width")[1] = 20.0
    assert a.entropy()["stage1.width"] < 0.01


def test_bad_relaxation_and_temperature_are_rejected(alpha):
    with pytest.raises(ValueError, match="relaxation: must be one of"):
        alpha.distribution("dirichlet")
    with pytest.raises(ValueError, match="tau: the temperature must be positive"):
        alpha.distribution("gumbel", tau=0)


def test_sharpened_belief_prices_the_argmax_member(tiny_space, tiny_table):
    """softmax(α/τ) at small τ gives E[cost] of the argmax member, the one that ships."""
    expected = ExpectedCost(tiny_space, CostTable.load(tiny_table), "latency_ms")
    a = ArchParameters(tiny_space)
    with torch.no_grad():
        for p in a.parameters():
            p.normal_(0, 0.3, generator=torch.Generator().manual_seed(p.numel()))
    shipped = expected.concrete(a.argmax())
    gaps = [abs(float(expected(a.probs(tau)).detach()) / shipped - 1) for tau in (1.0, 0.1, 0.01)]
    assert gaps[0] > 0.02 and gaps[0] > gaps[1] > gaps[2] and gaps[2] < 1e-6


def test_entropy_penalty_settles_each_decision_on_its_argmax(tiny_space):
    a = ArchParameters(tiny_space)
    with torch.no_grad():
        a.logits("stage1.width")[0] = 0.1  # a slight lead
    before = a.argmax()
    opt = torch.optim.SGD(a.parameters(), lr=1.0)
    for _ in range(50):
        opt.zero_grad()
        sum(a.entropies().values()).backward()
        opt.step()
    assert a.entropy()["stage1.width"] < 0.1
    assert a.argmax()["stage1.width"] == before["stage1.width"]
