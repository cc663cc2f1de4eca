"""Calibration tables: log-log interpolation, family matching, validation of files, CPU/GPU guards (no torch)."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sim.calibrate.interp import interp_loglog, merge_points
from sim.calibrate.table import (
    SCHEMA_VERSION,
    CalibrationTable,
    DeviceInfo,
    Entry,
    gpu_model_token,
    load_table,
    parse_table,
    table_to_yaml,
)
from sim.errors import SimInputError

GPU = DeviceInfo(name="NVIDIA H800", kind="cuda", num_sms=132, source="test", created="2025-01-01")
CPU = DeviceInfo(name="Some CPU", kind="cpu", source="test", created="2025-01-01")


def gemm(m: float, n: float, k: float, seconds: float, sms: int | None = None, **kw: object) -> Entry:
    flops = 2.0 * m * n * k
    scale = 132 / sms if sms else 1.0
    return Entry(kind="gemm", dtype="bf16", name="g", shape={"m": m, "n": n, "k": k}, seconds=seconds, samples=3,
                 flops=flops, achieved_flops_per_s=flops / seconds * scale, sms_used=sms, sm_scaled=bool(sms),
                 **kw)  # type: ignore[arg-type]


def table(*entries: Entry, device: DeviceInfo = GPU) -> CalibrationTable:
    return CalibrationTable(schema_version=SCHEMA_VERSION, device=device, entries=entries)


# ----------------------------------------------------------------------------------------- interpolation


@given(st.lists(st.tuples(st.floats(1, 1e6), st.floats(1e-3, 1e3)), min_size=1, max_size=8),
       st.floats(0.0, 1.0))
def test_interpolation_exact_at_points_and_monotone_between(raw: list[tuple[float, float]], t: float) -> None:
    points = merge_points(raw)
    for x, y in points:
        hit = interp_loglog(points, x)
        assert hit is not None and hit[1] and hit[0] == y
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        xs = [math.exp(math.log(x0) + f * (math.log(x1) - math.log(x0))) for f in (t * 0.5, t, 0.5 + t * 0.5)]
        ys = [interp_loglog(points, x) for x in xs]
        assert all(y is not None for y in ys)
        values = [y[0] for y in ys if y is not None]
        lo, hi = min(y0, y1), max(y0, y1)
        assert all(lo * (1 - 1e-9) <= v <= hi * (1 + 1e-9) for v in values)
        pairs = list(itertools.pairwise(values))
        if y1 >= y0:
            assert all(a <= b * (1 + 1e-12) for a, b in pairs)
        else:
            assert all(a >= b * (1 - 1e-12) for a, b in pairs)


def test_outside_measured_range_is_none() -> None:
    t = table(gemm(1024, 512, 512, 1e-3), gemm(4096, 512, 512, 2e-3))
    assert t.rate("gemm", "bf16", m=512, n=512, k=512) is None
    assert t.rate("gemm", "bf16", m=8192, n=512, k=512) is None
    mid = t.rate("gemm", "bf16", m=2048, n=512, k=512)
    assert mid is not None and mid.exact and not mid.at_measured_point
    at = t.rate("gemm", "bf16", m=4096, n=512, k=512)
    assert at is not None and at.at_measured_point and at.rate == pytest.approx(2 * 4096 * 512 * 512 / 2e-3)


def test_nearest_family_only_when_close() -> None:
    t = table(gemm(1024, 512, 512, 1e-3), gemm(4096, 512, 512, 2e-3))
    near = t.rate("gemm", "bf16", m=2048, n=700, k=512)  # log distance ln(700/512) = 0.31 <= ln 2
    assert near is not None and not near.exact and "nearest family" in near.source
    assert t.rate("gemm", "bf16", m=2048, n=1100, k=512) is None  # ln(1100/512) = 0.76 > ln 2
    assert t.rate("gemm", "bf16", m=2048, n=700, k=700) is not None  # sqrt(2) x 0.31 = 0.44
    assert t.rate("gemm", "fp8", m=2048, n=512, k=512) is None  # dtype never substitutes


def test_exact_family_out_of_range_does_not_borrow() -> None:
    t = table(gemm(1024, 512, 512, 1e-3), gemm(2048, 512, 512, 1.5e-3), gemm(8192, 600, 512, 5e-3))
    assert t.rate("gemm", "bf16", m=8192, n=512, k=512) is None
    assert t.rate("gemm", "bf16", m=8192, n=560, k=512) is not None


def test_sm_scaled_rate_is_whole_gpu() -> None:
    e = gemm(4096, 4096, 4096, 1e-3, sms=112)
    look = table(e).rate("gemm", "bf16", m=4096, n=4096, k=4096)
    assert look is not None and look.rate == pytest.approx(2 * 4096**3 / 1e-3 * 132 / 112)


# -------------------------------------------------------------------------------------------- files


def test_yaml_round_trip(tmp_path: Path) -> None:
    t = table(gemm(1024, 512, 512, 1e-3, note="a\nb"), gemm(4096, 512, 512, 2e-3, sms=112))
    path = tmp_path / "t.yaml"
    path.write_text(table_to_yaml(t, "made by a test\nsecond line"))
    text = path.read_text()
    assert text.startswith("# made by a test\n# second line\nschema_version: 1\n")
    assert load_table(path) == t


def _good_yaml() -> str:
    return table_to_yaml(table(gemm(1024, 512, 512, 1e-3)), "test")


@pytest.mark.parametrize(("change", "expect"), [
    (lambda s: s.replace("schema_version: 1", "schema_version: 99"), "schema_version 99"),
    (lambda s: s.replace("kind: gemm", "kind: matmul"), "entries.0.kind"),
    (lambda s: s.replace("seconds: 0.001", "seconds: -0.001"), "entries.0.seconds"),
    (lambda s: s.replace("achieved_flops_per_s: ", "achieved_flops_per_s: 2"), "does not match work / seconds"),
    (lambda s: s.replace("flops: 536870912.0", "flops: 536870913000.0"), "does not match the shape"),
    (lambda s: s.replace("m: 1024.0, ", ""), "needs m"),
    (lambda s: s.replace("kind: cuda", "kind: tpu"), "device.kind"),
    (lambda s: s + "surprise: 1\n", "surprise: unknown key"),
    (lambda s: s[: len(s) // 2] + "\n  - [unclosed", "not valid YAML"),
    (lambda s: "- just\n- a list\n", "not a calibration table"),
])
def test_corrupt_or_mismatched_file_is_rejected(tmp_path: Path, change, expect: str) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "bad.yaml"
    path.write_text(change(_good_yaml()))
    with pytest.raises(SimInputError) as err:
        load_table(path)
    assert expect in str(err.value)
    assert str(path) in str(err.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SimInputError, match="cannot read calibration file"):
        load_table(tmp_path / "nope.yaml")


def test_parse_table_accepts_its_own_output() -> None:
    assert parse_table(_good_yaml()).entries[0].name == "g"


# ------------------------------------------------------------------------------------------- guards


def test_cpu_table_is_never_gpu_data() -> None:
    t = table(gemm(1024, 512, 512, 1e-3), device=CPU)
    assert not t.is_gpu
    with pytest.raises(SimInputError, match="never GPU data"):
        t.check_usable_for("H800-SXM-80GB")
    warning = t.check_usable_for("H800-SXM-80GB", allow_cpu=True)
    assert warning is not None and "PIPELINE VALIDATION ONLY" in warning


def test_gpu_table_must_match_the_gpu() -> None:
    t = table(gemm(1024, 512, 512, 1e-3))
    assert t.is_gpu
    assert t.check_usable_for("H800-SXM-80GB") is None
    with pytest.raises(SimInputError, match="measured on NVIDIA H800 but the scenario's GPU is H100"):
        t.check_usable_for("H100-SXM-80GB")


@pytest.mark.parametrize(("a", "b", "same"), [
    ("NVIDIA H800", "H800-SXM-80GB", True), ("NVIDIA H100 80GB HBM3", "H100-SXM-80GB", True),
    ("NVIDIA H20", "H200-SXM-141GB", False), ("NVIDIA A100-SXM4-80GB", "A100-80GB-SXM", True),
    ("NVIDIA GB200", "B200", False),
])
def test_gpu_model_token(a: str, b: str, same: bool) -> None:
    assert (gpu_model_token(a) == gpu_model_token(b)) is same
