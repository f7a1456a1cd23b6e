"""Weight sharing: a smaller member uses exactly a prefix (centre crop for kernels) of a larger's."""

import random

import torch

from supernet import SuperNet, extract

from .test_extract import randomize_


def prefix_of(small: torch.Tensor, large: torch.Tensor) -> torch.Tensor:
    """The leading slice of ``large`` with ``small``'s shape; kernels are centre-cropped."""
    index = []
    for dim, (s, size) in enumerate(zip(small.shape, large.shape, strict=True)):
        lo = (size - s) // 2 if dim >= 2 else 0
        index.append(slice(lo, lo + s))
    return large[tuple(index)]


def nested_pairs(space, n: int, seed: int):
    """Random (a, b) with a ⊆ b, differing in widths, depths, expand ratios and kernels."""
    rng = random.Random(seed)
    for _ in range(n):
        b = space.sample(rng)
        changes = {}
        for d in space.decisions:
            if d.kind in ("width", "depth", "expand", "kernel"):
                options = [c for c in d.choices if c <= b[d.key]]
                changes[d.key.replace(".", "__")] = rng.choice(options)
        yield b.replace(**changes), b


def test_smaller_member_weights_are_a_prefix_of_the_larger_members(fmnist_space):
    net = randomize_(SuperNet(fmnist_space)).eval()
    for a, b in nested_pairs(fmnist_space, 10, seed=0):
        assert a <= b
        small, large = extract(net, a).state_dict(), extract(net, b).state_dict()
        assert set(small) <= set(large)  # fewer blocks and exits, never other ones
        for name, t in small.items():
            if t.dim() == 0:
                assert torch.equal(t, large[name]), name
            else:
                assert torch.equal(t, prefix_of(t, large[name])), name


def test_training_a_member_only_touches_its_prefix_of_the_shared_weights(tiny_space):
    net = randomize_(SuperNet(tiny_space)).train()
    for a, _ in nested_pairs(tiny_space, 6, seed=1):
        net.zero_grad()
        x = torch.randn(4, 1, 16, 16)
        sum(out.logsumexp(1).mean() for out in net(x, a)).backward()
        static = dict(extract(net, a).named_parameters())
        for name, p in net.named_parameters():
            if p.grad is None or "step" in name:
                continue
            sname = name.replace(".blocks.", ".")
            inside = torch.zeros_like(p, dtype=torch.bool)
            if sname in static:
                prefix_of(static[sname], inside).fill_(True)
            assert (p.grad[~inside] == 0).all(), f"{name}: gradient outside the member's weights"
            assert p.grad[inside].abs().sum() > 0 or "bn3.weight" in name, name
