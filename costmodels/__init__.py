"""What an architecture costs on a target: op signatures, cost tables, expected cost, fidelity.

Knows nothing of training; reads a `supernet` space only to enumerate the layers it can run.
"""

from costmodels.analytic import PRESETS, RooflineTarget, build_analytic_table, get_target
from costmodels.expected import ExpectedCost, table_cost
from costmodels.fidelity import FidelityReport, LinearCorrection, check_fidelity
from costmodels.profile import build_measured_table, measure_network_latency, measure_networks
from costmodels.signature import OpSignature, enumerate_signatures, space_fingerprint
from costmodels.table import CostTable, MissingSignatureError, TableError, TableMeta

__all__ = [
    "PRESETS", "CostTable", "ExpectedCost", "FidelityReport", "LinearCorrection",
    "MissingSignatureError", "OpSignature", "RooflineTarget", "TableError", "TableMeta",
    "build_analytic_table", "build_measured_table", "check_fidelity", "enumerate_signatures",
    "get_target", "measure_network_latency", "measure_networks", "space_fingerprint",
    "table_cost",
]
