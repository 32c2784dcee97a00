"""The host record: what machine a run's numbers were measured on (recorded in every config.json)."""

from __future__ import annotations

import json
import os
import platform
import re

import torch
from omegaconf import OmegaConf

from immiscible_policy.host import CPU_FLAGS, cpu_info, host_record

KEYS = {"python", "torch", "cpu", "cpu_model", "cpu_flags", "cores", "threads", "cuda", "device", "date"}

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse avx avx2 fma f16c avx512f avx512bw avx512vl avx512_vnni avx512_bf16 amx_tile amx_bf16 xyz

processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse avx
"""


def test_host_record_keys_and_values():
    rec = host_record()
    assert set(rec) == KEYS
    assert rec["python"] == platform.python_version() and rec["torch"] == torch.__version__
    assert rec["cpu"] == (platform.processor() or platform.machine())
    assert rec["cores"] == os.cpu_count() and rec["threads"] == torch.get_num_threads()
    assert rec["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    assert (rec["cuda"] is None) == (not torch.cuda.is_available())
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", rec["date"])
    assert set(rec["cpu_flags"]) <= set(CPU_FLAGS)
    json.dumps(rec)  # goes into config.json as is
    assert host_record("cpu")["device"] == "cpu" and host_record(torch.device("cpu"))["device"] == "cpu"


def test_cpu_model_and_flags_from_cpuinfo(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text(CPUINFO)
    model, flags = cpu_info(path)
    assert model == "Intel(R) Xeon(R) Platinum 8480+"
    assert flags == list(CPU_FLAGS)  # every wanted flag, in CPU_FLAGS order; unknown ones (xyz) left out
    rec = host_record(cpuinfo=path)
    assert rec["cpu_model"] == model and rec["cpu_flags"] == list(CPU_FLAGS)
    assert cpu_info(tmp_path / "absent") == (None, [])  # no /proc (macOS): recorded as unknown


def test_run_record_carries_the_host():
    from immiscible_policy.registry import create
    from immiscible_policy.training import run_record

    rec = run_record(OmegaConf.create({"a": 1}), create("vanilla"), batch=4, steps_per_epoch=2, device="cpu")
    assert set(rec["host"]) == KEYS and rec["host"]["device"] == "cpu"
