"""Analytic costs: counts (MACs, BitOPs, bytes) and a roofline model of an accelerator.

Counts are exact for the layers the supernet builds. The roofline is a first-order estimate:
a layer takes ``max(compute time, memory time)``; use it to steer a search toward a target you
cannot measure yet, then replace it by a measured or imported table. Every preset's numbers
and where they come from are stated next to it; treat them as assumptions, not datasheets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from costmodels.signature import FLOAT_BITS, OpSignature, enumerate_signatures
from costmodels.table import CostTable, TableMeta
from supernet.space import SearchSpace

BIAS_BITS = 32  # batch norm folds into a per-channel bias, kept at 32 bits as integer runtimes do


# -- counts ---------------------------------------------------------------------------------------
def macs(sig: OpSignature) -> int:
    """Multiply-accumulates of the conv / fully-connected part (pooling and BN are not MACs)."""
    return sig.batch * sig.out_size ** 2 * sig.weight_count


def bitops(sig: OpSignature) -> int:
    """BitOPs = MACs × weight bits × activation bits (the mixed-precision compute proxy)."""
    return macs(sig) * sig.weight_bits * sig.act_bits


def _bytes(count: int, bits: int) -> int:
    return math.ceil(count * bits / 8)


def weight_bytes(sig: OpSignature) -> int:
    """Storage: weights at ``weight_bits`` plus one 32-bit bias per output channel."""
    return _bytes(sig.weight_count, sig.weight_bits) + _bytes(sig.out_channels, BIAS_BITS)


def input_elements(sig: OpSignature) -> int:
    return sig.batch * sig.in_channels * sig.in_size ** 2


def output_elements(sig: OpSignature) -> int:
    return sig.batch * sig.out_channels * sig.out_size ** 2


def activation_bytes(sig: OpSignature) -> int:
    """Input plus output tensor at ``act_bits``: what must be live while the layer runs.

    A network's peak activation memory is the max of this over its layers.
    """
    return _bytes(input_elements(sig) + output_elements(sig), sig.act_bits)


def count_metrics(sig: OpSignature) -> dict[str, float]:
    """The device-independent metrics every table carries."""
    return {"macs": float(macs(sig)), "bitops": float(bitops(sig)),
            "weight_bytes": float(weight_bytes(sig)),
            "peak_activation_bytes": float(activation_bytes(sig))}


# -- roofline -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RooflineTarget:
    """A first-order accelerator model. Rates in MAC/s and bytes/s, sizes in bytes, energy in pJ.

    ``peak_macs`` maps natively supported operand widths (bits) to peak MAC/s; the 32 entry is
    the float rate. A layer runs at the narrowest supported width ≥ max(weight, act bits). With
    ``bitop_scaling`` the integer rate instead scales as ``peak_macs[8] · 64 / (w · a)`` (fabric
    whose cost grows with the product of operand widths, as in LUT/bit-serial FPGA designs).
    Weights beyond ``sram_bytes`` (per layer) are fetched at ``offchip_bandwidth`` instead.
    """

    name: str
    peak_macs: dict[int, float]
    bandwidth: float  # on-chip bytes/s between SRAM and the compute units
    sram_bytes: int
    offchip_bandwidth: float  # bytes/s for weights that do not fit on chip
    energy_per_mac_pj: dict[int, float]  # at the same widths as peak_macs (8 = anchor for scaling)
    energy_per_byte_onchip_pj: float
    energy_per_byte_offchip_pj: float
    layer_overhead_s: float = 0.0  # fixed dispatch cost per layer
    bitop_scaling: bool = False
    notes: str = ""
    sources: tuple[str, ...] = field(default_factory=tuple)

    def run_width(self, sig: OpSignature) -> int:
        """The supported operand width a layer runs at (next one up; 32 = float)."""
        need = max(sig.weight_bits, sig.act_bits)
        wider = [w for w in self.peak_macs if w >= need]
        return min(wider) if wider else max(self.peak_macs)

    def _rate_and_energy(self, sig: OpSignature) -> tuple[float, float]:
        if self.bitop_scaling and max(sig.weight_bits, sig.act_bits) < FLOAT_BITS:
            scale = 64.0 / (sig.weight_bits * sig.act_bits)
            return self.peak_macs[8] * scale, self.energy_per_mac_pj[8] / scale
        w = self.run_width(sig)
        return self.peak_macs[w], self.energy_per_mac_pj[w]

    def costs(self, sig: OpSignature) -> dict[str, float]:
        """``latency_ms`` and ``energy_mj`` of one layer (plus the count metrics)."""
        rate, pj_per_mac = self._rate_and_energy(sig)
        wbytes = weight_bytes(sig)
        offchip = max(0, wbytes - self.sram_bytes)
        onchip = wbytes - offchip + activation_bytes(sig)
        compute_s = macs(sig) / rate
        memory_s = onchip / self.bandwidth + offchip / self.offchip_bandwidth
        latency_s = max(compute_s, memory_s) + self.layer_overhead_s
        energy_pj = (macs(sig) * pj_per_mac + onchip * self.energy_per_byte_onchip_pj
                     + offchip * self.energy_per_byte_offchip_pj)
        return {**count_metrics(sig), "latency_ms": latency_s * 1e3, "energy_mj": energy_pj * 1e-9}


MiB = 1 << 20

PRESETS: dict[str, RooflineTarget] = {
    # Coral Edge TPU. Google lists 4 TOPS int8 at 2 TOPS/W: 2e12 MAC/s, 1 pJ/MAC, and ~8 MB of
    # on-chip SRAM caching parameters; the rest stream from host memory. int8 only: 4-bit layers
    # run at 8 bits (no gain); float layers are not compiled for the TPU and fall back to the
    # host CPU (assumed a Cortex-A53-class core: 2e9 MAC/s, 100 pJ/MAC). On-chip bandwidth
    # (100 GB/s), host streaming (0.4 GB/s, USB 3-class) and the per-layer overhead are
    # assumptions. Energy per byte: 45 nm figures of Horowitz, ISSCC 2014 (SRAM ~2.5 pJ/B,
    # DRAM ~200 pJ/B).
    "edgetpu": RooflineTarget(
        name="edgetpu", peak_macs={8: 2e12, 32: 2e9}, bandwidth=100e9, sram_bytes=8 * MiB,
        offchip_bandwidth=0.4e9, energy_per_mac_pj={8: 1.0, 32: 100.0},
        energy_per_byte_onchip_pj=2.5, energy_per_byte_offchip_pj=200.0, layer_overhead_s=2e-6,
        notes="int8 only: <8-bit layers run at 8 bits; float layers fall back to the host CPU",
        sources=("coral.ai Edge TPU datasheet (4 TOPS, 2 TOPS/W, ~8 MB SRAM)",
                 "Horowitz ISSCC 2014 (memory energy)", "assumed: bandwidths, CPU fallback")),
    # A ZCU102-class FPGA design (assumption): ~2500 DSP slices at ~200 MHz packing two int8
    # MACs each → 1e12 int8 MAC/s. Narrower operands are mapped to LUT arithmetic whose
    # throughput scales as 1/(w·a) (FINN / BISMO-style bit-level designs): 4×4 bits runs 4× the
    # int8 rate. Float32 MACs need several DSPs each: assumed 5e10 MAC/s. BRAM+URAM ~4 MiB;
    # DDR4-2400 x64 gives 19.2 GB/s off chip; on-chip bandwidth assumed 500 GB/s. Energy: 2 pJ
    # per int8 MAC (≈10× the 45 nm ASIC figure of Horowitz 2014, for FPGA overhead), scaled
    # with w·a; 40 pJ per float MAC; 5 / 200 pJ per on/off-chip byte.
    "fpga": RooflineTarget(
        name="fpga", peak_macs={8: 1e12, 32: 5e10}, bandwidth=500e9, sram_bytes=4 * MiB,
        offchip_bandwidth=19.2e9, energy_per_mac_pj={8: 2.0, 32: 40.0},
        energy_per_byte_onchip_pj=5.0, energy_per_byte_offchip_pj=200.0, layer_overhead_s=1e-6,
        bitop_scaling=True,
        notes="integer throughput ∝ 1/(weight bits × act bits), anchored at int8",
        sources=("assumed ZCU102-class design: 2500 DSP × 2 int8 MAC × 200 MHz",
                 "Umuroglu et al. (FINN 2017, BISMO 2018): bit-level cost ∝ w·a",
                 "Horowitz ISSCC 2014 (energy, ×10 for FPGA)")),
    # A Cortex-M7 microcontroller at 480 MHz (STM32H7-class) running CMSIS-NN: int8 via 2-way
    # SIMD MACs, ~0.5 MAC/cycle sustained (assumed) → 2.4e8 MAC/s; 4-bit weights are unpacked
    # to int8 (no gain in speed); float with the FPU ~0.25 MAC/cycle → 1.2e8 MAC/s. 1 MiB SRAM;
    # weights beyond it read from flash at ~0.1 GB/s; SRAM bandwidth ~1.9 GB/s (32 bits per
    # cycle). Energy: ~100 mW at 480 MHz ≈ 200 pJ/cycle → ~400 pJ per int8 MAC, 800 per float
    # MAC; 10 / 100 pJ per SRAM / flash byte (assumed).
    "mcu": RooflineTarget(
        name="mcu", peak_macs={8: 2.4e8, 32: 1.2e8}, bandwidth=1.9e9, sram_bytes=1 * MiB,
        offchip_bandwidth=0.1e9, energy_per_mac_pj={8: 400.0, 32: 800.0},
        energy_per_byte_onchip_pj=10.0, energy_per_byte_offchip_pj=100.0, layer_overhead_s=2e-5,
        notes="int8 CMSIS-NN kernels; <8-bit runs at 8 bits; float on the FPU",
        sources=("assumed STM32H7-class Cortex-M7 @ 480 MHz, CMSIS-NN throughput",
                 "assumed ~100 mW active power")),
}


def get_target(name: str) -> RooflineTarget:
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown analytic target {name!r}; presets are {sorted(PRESETS)}, or "
                       "measure on a torch device with --target cpu / cuda") from None


def build_analytic_table(space: SearchSpace, target: RooflineTarget | str, batch: int = 1,
                         space_file: str | None = None) -> CostTable:
    """Price every signature of ``space`` with a roofline ``target`` (a preset name or a model)."""
    target = get_target(target) if isinstance(target, str) else target
    entries = {s.key: target.costs(s) for s in sorted(enumerate_signatures(space, batch))}
    meta = TableMeta(
        target=target.name, device=f"roofline model {target.name!r}", method="analytic",
        batch=batch, notes=f"{target.notes}. Sources: {'; '.join(target.sources)}",
    ).for_space(space, space_file)
    return CostTable(entries, meta)
