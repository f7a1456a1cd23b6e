"""What ships: the family file, standalone and integer (ONNX QDQ) members, and the runtime.

Needs neither Lightning nor wandb: a device loads a member with torch or onnxruntime alone.
"""

from deploy.controller import BudgetController, SwitchEvent
from deploy.family_file import (
    FAMILY_FORMAT,
    FAMILY_VERSION,
    FamilyError,
    FamilyFile,
    MemberRecord,
    exit_classifiers,
    member_state,
    read_family,
    write_family,
)
from deploy.member_file import load_member, load_weight_quant, write_member
from deploy.onnx_qdq import lower_member
from deploy.quant_params import LoweringError, WeightQuant, fold_bn, trained_weight_quant
from deploy.runtime import EarlyExitResult, FamilyRuntime, ThresholdCalibration, confidence

__all__ = [
    "FAMILY_FORMAT", "FAMILY_VERSION", "BudgetController", "EarlyExitResult", "FamilyError",
    "FamilyFile", "FamilyRuntime", "LoweringError", "MemberRecord", "SwitchEvent",
    "ThresholdCalibration", "WeightQuant", "confidence", "fold_bn", "load_member",
    "exit_classifiers", "load_weight_quant", "lower_member", "member_state", "read_family",
    "trained_weight_quant", "write_family", "write_member",
]
