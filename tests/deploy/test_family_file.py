"""The family file: one writer, one reader, a version, and the runtime built from it."""

import pytest
import torch

from deploy import (
    FAMILY_VERSION,
    FamilyError,
    FamilyFile,
    FamilyRuntime,
    MemberRecord,
    exit_classifiers,
    member_state,
    read_family,
    write_family,
)
from supernet import SuperNet, extract


@pytest.fixture()
def family(tiny_space):
    torch.manual_seed(0)
    net = SuperNet(tiny_space).eval()
    members = []
    for i, config in enumerate([tiny_space.smallest(), tiny_space.largest()]):
        static = extract(net, config)
        for m in static.modules():  # each member its own statistics
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2)
        with torch.no_grad():  # and its own classifiers, as the export's refit gives
            for fc in exit_classifiers(static):
                fc.weight.normal_()
        members.append(MemberRecord(f"m{i}", config, {"latency_ms": 1.0 + i},
                                    {"latency_ms": [0.5 + i, 1.0 + i]}, member_state(static),
                                    [0.5, 0.6 + i / 10], -1.5 * i, ["latency_ms<=2"] * i))
    return net, FamilyFile(tiny_space.spec, net.state_dict(), members, "latency_ms", "abc",
                           {"exit": torch.tensor([0.3, 0.7])}, {"latency_ms<=2": "m1"}, 3)


def same(a, b):
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    return a == b


def test_round_trip_through_the_one_reader(family, tmp_path):
    _, fam = family
    path = write_family(fam, tmp_path / "family.pt")
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "hwnas-family" and raw["version"] == FAMILY_VERSION
    back = read_family(path)
    for field in ("space", "metric", "table_id", "budget_picks", "recal_batches", "alpha",
                  "state_dict"):
        assert same(getattr(back, field), getattr(fam, field)), field
    assert len(back.members) == len(fam.members)
    for got, want in zip(back.members, fam.members, strict=True):
        assert got.config == want.config and got.state.keys() == want.state.keys()
        assert same(got.to_dict(), want.to_dict())


def test_runtime_members_carry_their_own_batch_norm_statistics(family, tmp_path):
    net, fam = family
    runtime = FamilyRuntime.load(write_family(fam, tmp_path / "family.pt"))
    assert runtime.names == ["m0", "m1"]
    x = torch.randn(4, 1, 16, 16)
    for rec in fam.members:
        want = extract(net, rec.config).eval()
        want.load_state_dict(rec.state, strict=False)
        runtime.set_member(rec.name)
        with torch.no_grad():
            assert all(torch.equal(a, b) for a, b in zip(runtime(x), want(x), strict=True))
        assert same(member_state(runtime.module), rec.state)


def test_other_versions_and_foreign_statistics_say_how_to_fix(family, tmp_path):
    _, fam = family
    path = write_family(fam, tmp_path / "family.pt")
    raw = torch.load(path, weights_only=True)
    raw["version"] = FAMILY_VERSION + 1
    torch.save(raw, tmp_path / "new.pt")
    with pytest.raises(FamilyError, match=rf"version {FAMILY_VERSION + 1}, this hwnas reads "
                                          rf"versions 2, 3, {FAMILY_VERSION}; export it again"):
        read_family(tmp_path / "new.pt")
    raw["version"] = FAMILY_VERSION
    raw["members"][0]["state"]["stages.0.blocks.0.bn1.running_mean"] = torch.zeros(4)
    torch.save(raw, tmp_path / "renamed.pt")
    with pytest.raises(FamilyError, match=r"member 'm0'.*stages\.0\.blocks\.0\.bn1.*names no "
                                          r"tensor.*export it again"):
        FamilyRuntime.load(tmp_path / "renamed.pt")
    del raw["members"][1]["costs"]
    torch.save(raw, tmp_path / "broken.pt")
    with pytest.raises(FamilyError, match=r"malformed family checkpoint \(KeyError"):
        read_family(tmp_path / "broken.pt")


def test_a_version_2_family_loads_with_the_shared_classifiers(family, tmp_path):
    """Version 2 stored each member's batch-norm statistics alone (key ``bn``): its members
    keep the supernet's exit classifiers."""
    net, fam = family
    raw = torch.load(write_family(fam, tmp_path / "family.pt"), weights_only=True)
    raw["version"] = 2
    for m in raw["members"]:
        state = m.pop("state")
        m["bn"] = {k: v for k, v in state.items() if k.endswith(("_mean", "_var"))}
    torch.save(raw, tmp_path / "v2.pt")
    runtime = FamilyRuntime.load(tmp_path / "v2.pt")
    x = torch.randn(4, 1, 16, 16)
    for rec, m in zip(fam.members, raw["members"], strict=True):
        want = extract(net, rec.config).eval()
        want.load_state_dict(m["bn"], strict=False)
        runtime.set_member(rec.name)
        with torch.no_grad():
            assert all(torch.equal(a, b) for a, b in zip(runtime(x), want(x), strict=True))
