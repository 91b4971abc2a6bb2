"""bench/gpu.py runs on the CPU (no dataset, no network) and its last line carries every ratio it promises."""

from __future__ import annotations

import re
import sys

from tests.conftest import load_bench


def test_gpu_bench_runs_on_the_cpu(monkeypatch, capsys):
    bench = load_bench("gpu")
    monkeypatch.setattr(sys, "argv", ["gpu.py", "--device", "cpu", "--images", "48", "--epochs", "1"])
    bench.main()
    last = capsys.readouterr().out.strip().splitlines()[-1]
    fields = dict(kv.split("=") for kv in last.split())
    assert set(fields) == {"student_images_per_s", "kd_images_per_s", "teacher_images_per_s", "trial_hours",
                           "study_days", "channels_last_ratio", "bf16_ratio", "deterministic", "device"}
    assert fields["device"] == "cpu" and fields["bf16_ratio"] == "nan"  # bf16 is timed on CUDA only
    assert fields["deterministic"] == "yes"  # same seeds, same weights, bit for bit
    for key in ("student_images_per_s", "kd_images_per_s", "teacher_images_per_s", "trial_hours"):
        assert float(fields[key]) > 0
    assert re.fullmatch(r"\d+\.\d{3}", fields["channels_last_ratio"])
