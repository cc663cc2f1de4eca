"""``sim calibrate``: measure kernel rates on this machine, or import them from a profiler trace.

``sim calibrate --device cpu|cuda [--quick] [--workload W] --out FILE`` times the reference model's kernels
(needs the ``calibrate`` extra: torch); ``sim calibrate --from-trace TRACE.json --out FILE`` reads a PyTorch
profiler Chrome trace (DeepSeek-V3's H800 training trace) and needs no torch. Progress goes to stderr; the
table is written atomically.
"""

from __future__ import annotations

import importlib.util
import time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import click

from sim.cli.common import echo_json, write_atomic
from sim.errors import SimInputError
from sim.outputs import CSV_FORMATS, YAML_FORMATS, check_outputs

if TYPE_CHECKING:
    from sim.calibrate.table import CalibrationTable
    from sim.config import ModelSpec

INSTALL_HINT = "install the calibrate extra: pip install -e '.[calibrate]'"


def _write_text(text: str, path: Path) -> None:
    path.write_text(text)


def _say(message: str) -> None:
    """Progress, on stderr (stdout carries only the result, or the ``--json`` object)."""
    click.echo(f"[calibrate] {message}", err=True)


@click.command()
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default=None,
              help="time kernels on this machine's CPU or first CUDA GPU")
@click.option("--from-trace", "trace", type=click.Path(dir_okay=False), default=None,
              help="import kernel timings from a PyTorch profiler Chrome trace instead")
@click.option("--quick", is_flag=True, help="the short preset (about a minute on a CPU, under 5 on one GPU)")
@click.option("--workload", default=None,
              help="model or job whose op shapes to use (default: DeepSeek-V3, workloads/models/deepseek_v3_671b)")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="calibration table to write (YAML)")
@click.option("--regions-csv", type=click.Path(dir_okay=False), default=None,
              help="with --from-trace: also write the per-region busy-time summary here")
@click.option("--kernels-csv", type=click.Path(dir_okay=False), default=None,
              help="with --from-trace: also write the per-kernel samples here")
@click.option("--json", "as_json", is_flag=True, help="print a one-object JSON summary")
def calibrate(device: str | None, trace: str | None, quick: bool, workload: str | None, out: str,
              regions_csv: str | None, kernels_csv: str | None, as_json: bool) -> None:
    """Write a calibration table that `sim run --calibration FILE` reads."""
    if (device is None) == (trace is None):
        raise SimInputError("give exactly one of --device cpu|cuda or --from-trace TRACE.json", field="--device")
    check_outputs([(out, "--out", YAML_FORMATS), (regions_csv, "--regions-csv", CSV_FORMATS),
                   (kernels_csv, "--kernels-csv", CSV_FORMATS)])
    from sim.calibrate.table import table_to_yaml
    from sim.loading import load_model

    model, scenario = load_model(workload or "deepseek_v3_671b")
    start = time.perf_counter()
    if trace is not None:
        table, header, extras = _from_trace(trace, model, regions_csv, kernels_csv)
    else:
        if regions_csv or kernels_csv:
            raise SimInputError("applies only with --from-trace", field="--regions-csv")
        if importlib.util.find_spec("torch") is None:
            raise SimInputError(INSTALL_HINT, field="--device")
        from sim.calibrate.runner import calibrate as run_calibration

        assert device is not None
        table, header = run_calibration(device, quick, model, scenario, _say)
        extras = {}
    for path, content in {out: table_to_yaml(table, header), **extras}.items():
        write_atomic(path, partial(_write_text, content), "--out")
    elapsed = time.perf_counter() - start
    summary = {"out": str(out), "device": table.device.name, "device_kind": table.device.kind,
               "entries": len(table.entries), "kinds": sorted({e.kind for e in table.entries}),
               "wall_s": round(elapsed, 2), "extra_files": sorted(extras)}
    if as_json:
        echo_json(summary)
    else:
        click.echo(f"wrote {out}: {len(table.entries)} entries from {table.device.name} ({table.device.kind}) "
                   f"in {elapsed:.1f} s")


def _from_trace(trace: str, model: ModelSpec, regions_csv: str | None,
                kernels_csv: str | None) -> tuple[CalibrationTable, str, dict[str, str]]:
    from sim.calibrate.trace_import import import_trace_file

    result = import_trace_file(trace, model)
    name = Path(trace).name
    header = (f"Calibration table imported from the PyTorch profiler trace {name} by\n"
              f"  sim calibrate --from-trace {name} --out FILE\n"
              "Kernel shapes are inferred from kernel names, annotation regions and the model config "
              "(sim/calibrate/deepseek_trace.py).\nRates are whole-GPU (scaled from the SMs the kernels had); "
              "seconds are raw. Regenerate rather than edit.")
    extras: dict[str, str] = {}
    if regions_csv:
        extras[regions_csv] = result.regions_csv()
    if kernels_csv:
        extras[kernels_csv] = result.kernels_csv()
    return result.table, header, extras
