"""The one parser of dtype names (`--dtype`, `serve(dtype=...)`): short and torch spellings, and a default that
depends on the device."""

from __future__ import annotations

import torch

from minimax01.errors import RequestError

DTYPES: dict[str, torch.dtype] = {
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
    "fp32": torch.float32, "float32": torch.float32, "fp64": torch.float64, "float64": torch.float64,
}


def parse_dtype(value: torch.dtype | str | None, device: str | torch.device) -> torch.dtype:
    """`value` as a torch dtype; None or "auto" is bf16 on an accelerator and fp32 on the CPU, where bf16
    matmuls are slow. RequestError for an unknown name."""
    if isinstance(value, torch.dtype):
        return value
    if value is None or value == "auto":
        return torch.float32 if torch.device(device).type == "cpu" else torch.bfloat16
    if value not in DTYPES:
        raise RequestError(f"dtype {value!r} is not one of {', '.join(DTYPES)}")
    return DTYPES[value]
