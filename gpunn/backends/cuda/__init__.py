"""CUDA sources and the names of their template instances, shared by the CuPy backend (which
loads them through cupy.RawModule) and the NVRTC build check in the tests."""

from __future__ import annotations

from pathlib import Path

from .. import schedule

KERNELS_CU = Path(__file__).with_name("kernels.cu")

TEMPLATED = ("bias_act", "relu_backward", "column_sum", "relu_backward_column_sum",
             "relu_backward_column_sum_bf16", "take_rows", "softmax_cross_entropy",
             "narrow_forward", "narrow_forward_bf16", "narrow_weight_grads",
             "narrow_weight_grads_bf16", "narrow_dinputs_relu_bgrad",
             "narrow_dinputs_relu_bgrad_bf16", "sgd_update", "cache_update", "adam_update",
             "train_in_one_kernel")
PLAIN = ("advance_schedule", "bias_act_quads", "float_to_bf16", "take_rows_bf16",
         "transpose", "hold_device")

#: Options given to NVRTC (through cupy.RawModule) besides the target architecture: the schedule's
#: slots and the rule codes as macros (schedule.py), so the kernels read the slots Python writes.
NVRTC_OPTIONS = ("-std=c++17", *schedule.cuda_defines())


def name_expressions() -> list[str]:
    """Every kernel instance the backend may ask for: each template for float and double."""
    return [f"{name}<{t}>" for name in TEMPLATED for t in ("float", "double")] + list(PLAIN)


def source() -> str:
    return KERNELS_CU.read_text()
