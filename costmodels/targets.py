"""Measured targets: the runtime a table times its layers on, and whole members on.

``cpu`` and ``cuda[:N]`` run the extracted network in torch eager mode (fake quantizers in
float, as the search trains it); ``onnxruntime`` runs it as the exported integer model would
(see `costmodels.onnx_target`). Each target builds zero-argument calls for one layer, one whole
member, and the per-network overhead (a run that does nothing but pass its input through), so a
table and a fidelity check time exactly the same kind of call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch
from torch import nn

from costmodels import onnx_target
from costmodels.signature import FLOAT_BITS, OpSignature
from supernet.layers import LayerShape, layer_module

RUNTIMES = {"cpu": "torch-eager (CPU)", "cuda": "torch-eager (CUDA)",
            "onnxruntime": "onnxruntime (CPU, QDQ int8 for quantized layers)"}


def is_measured(target: str) -> bool:
    """Whether ``target`` names a runtime this machine can time (vs. an analytic preset)."""
    return target.split(":")[0] in RUNTIMES


def op_module(sig: OpSignature, act: str) -> nn.Module:
    """The layer as an extracted network runs it; ``act`` is the space's activation name."""
    return layer_module(sig, act)


def torch_runtime_signature(sig: OpSignature) -> OpSignature:
    """The signature with what does not change torch-eager float runtime erased.

    Extracted weights are stored already quantized in float, so weight bits cost nothing, and a
    frozen activation quantizer runs the same ops at 4 or 8 bits: only "quantized or not" stays.
    """
    return replace(sig, weight_bits=FLOAT_BITS, act_bits=8 if sig.act_bits < FLOAT_BITS
                   else FLOAT_BITS)


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run with a fixed intra-op thread count, restoring the previous one afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass(frozen=True)
class Target:
    """A measured target by name (``cpu``, ``cuda``, ``cuda:1``, ``onnxruntime``)."""

    name: str
    threads: int = 1

    def __post_init__(self) -> None:
        if not is_measured(self.name):
            raise ValueError(f"target: {self.name!r} is not a measured runtime; use one of "
                             f"{sorted(RUNTIMES)} (cuda:N for another GPU)")
        if self.threads < 1:
            raise ValueError(f"threads: must be >= 1, got {self.threads}")

    @property
    def kind(self) -> str:
        return self.name.split(":")[0]

    @property
    def runtime(self) -> str:
        return RUNTIMES[self.kind]

    @property
    def device(self) -> torch.device:
        return torch.device(self.name if self.kind == "cuda" else "cpu")

    def runtime_signature(self, sig: OpSignature) -> OpSignature:
        """The signature that decides this runtime's time (bit-widths it cannot tell apart
        erased); each is timed once and fills every signature that maps to it."""
        if self.kind == "onnxruntime":
            return onnx_target.runtime_signature(sig)
        return torch_runtime_signature(sig)

    @contextmanager
    def running(self) -> Iterator[None]:
        """Threads fixed and autograd off, around every timed call."""
        with torch_threads(self.threads), torch.inference_mode():
            yield

    def layer(self, sig: OpSignature, act: str, seed: int = 0) -> Callable[[], object]:
        """One call of the layer with signature ``sig`` on a fixed random input."""
        with torch.random.fork_rng(devices=[]):  # seeded weights; the caller's RNG untouched
            torch.manual_seed(seed)
            module = op_module(sig, act)
        shape = (sig.batch, sig.in_channels, sig.in_size, sig.in_size)
        if self.kind == "onnxruntime":
            return onnx_target.session_call(onnx_target.lower_layer(module, sig), shape,
                                            self.threads, seed)
        return self._torch_call(module, shape, seed)

    def entry_calls(self, shapes: Sequence[OpSignature], act: str, input_shape: Sequence[int],
                    seed: int = 0) -> EntryCalls:
        """The calls that time table entries for ``shapes`` (with the overhead run first)."""
        return EntryCalls(self, shapes, act, input_shape, seed)

    def network(self, module: nn.Module, layers: Sequence[LayerShape],
                input_shape: Sequence[int], seed: int = 0) -> Callable[[], object]:
        """One call of an extracted member (``layers``: its layers in execution order)."""
        if self.kind == "onnxruntime":
            return onnx_target.session_call(
                onnx_target.lower_member(module, layers, input_shape), input_shape,
                self.threads, seed)
        return self._torch_call(module, input_shape, seed)

    def overhead(self, input_shape: Sequence[int], seed: int = 0) -> Callable[[], object]:
        """One run that only passes its input through: launch, input and output."""
        if self.kind == "onnxruntime":
            return onnx_target.session_call(onnx_target.identity_model(input_shape),
                                            input_shape, self.threads, seed)
        return self._torch_call(nn.Identity(), input_shape, seed)

    def _torch_call(self, module: nn.Module, shape: Sequence[int], seed: int
                    ) -> Callable[[], object]:
        module = module.to(self.device).eval()
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(self.device)
        return lambda: module(x)


class EntryCalls:
    """Calls that time a table's entries, and how their times become entries (ms).

    torch: each layer's own call, minus the overhead run (launch, input, output), which every
    call pays. onnxruntime: each layer after a prefix, minus that prefix alone (see
    `onnx_target.lower_chain`), so an integer layer is priced without the quantize, layout
    change and dequantize that a lone layer's graph needs but a network's chain shares.
    ``calls[0]`` is the overhead run.
    """

    def __init__(self, target: Target, shapes: Sequence[OpSignature], act: str,
                 input_shape: Sequence[int], seed: int = 0):
        self.calls: list[Callable[[], object]] = [target.overhead(input_shape, seed)]
        self.index: dict[OpSignature, tuple[int, int]] = {}  # shape -> (call, baseline call)
        prefixes: dict[tuple, int] = {}
        for shape in shapes:
            if target.kind != "onnxruntime":
                self.index[shape] = (len(self.calls), 0)
                self.calls.append(target.layer(shape, act, seed))
                continue
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                prefix = onnx_target.prefix_module(shape)
            key = onnx_target.prefix_key(shape)
            chain_shape = (shape.batch, onnx_target.PREFIX_CHANNELS, shape.in_size,
                           shape.in_size)
            if key not in prefixes:
                prefixes[key] = len(self.calls)
                self.calls.append(onnx_target.session_call(
                    onnx_target.lower_chain([prefix], shape), chain_shape, target.threads,
                    seed))
            self.index[shape] = (len(self.calls), prefixes[key])
            self.calls.append(onnx_target.session_call(
                onnx_target.lower_chain([prefix, op_module(shape, act)], shape), chain_shape,
                target.threads, seed))

    def entries(self, timed: Sequence[tuple[float, float]]
                ) -> tuple[float, dict[OpSignature, tuple[float, float]]]:
        """(overhead ms, {shape: (entry ms, spread of its call)}) from ``calls``' times."""
        return timed[0][0], {s: (max(timed[i][0] - timed[b][0], 0.0), timed[i][1])
                             for s, (i, b) in self.index.items()}
