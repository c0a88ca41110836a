"""The process around a training call: machine description, thread count, JSON output."""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import sys
from pathlib import Path
from typing import Any, Dict

import torch

__all__ = ["Threads", "default_out_dir", "machine_info", "write_json"]


def _finite_or_none(x: Any) -> Any:
    """JSON-safe copy: NaN/inf floats become None (strict JSON has no NaN)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite_or_none(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite_or_none(v) for v in x]
    return x


def machine_info(device: str = "cpu") -> Dict[str, Any]:
    info = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": sys.version.split()[0],
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(torch.device(device))
        info["cuda_version"] = torch.version.cuda
    return info


def default_out_dir() -> Path:
    return Path("runs") / _dt.datetime.now().strftime("%Y%m%d-%H%M%S")


def write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as f:
        json.dump(_finite_or_none(obj), f, indent=1, allow_nan=False)
    os.replace(tmp, path)


class Threads:
    """Context manager: ``torch.set_num_threads(n)`` for n > 0, restored on exit."""

    def __init__(self, n: int) -> None:
        self.n, self.old = n, None

    def __enter__(self):
        if self.n > 0:
            self.old = torch.get_num_threads()
            torch.set_num_threads(self.n)
        return self

    def __exit__(self, *exc):
        if self.old is not None:
            torch.set_num_threads(self.old)


