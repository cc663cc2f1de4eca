"""`sim schedule`: the issue's done-when figures, JSON keys, the grid, --plot, and bad input (exit 2).

Figures: DeepSeek-V3 report Table 2 / deepseek-ai/DualPipe README (PP = stages), F=1, B=2, W=1, F&B=3.
"""

from __future__ import annotations

import json

import pytest

from sim.cli import main


def _json(runner, *args: str) -> dict:
    r = runner.invoke(main, ["schedule", *args, "--json"])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


@pytest.mark.parametrize(("args", "bubble"), [
    (("dualpipe", "--pp", "16", "--microbatches", "40", "--f", "1", "--b", "2", "--w", "1", "--fb", "3"), 14),
    (("1f1b", "--pp", "8", "--microbatches", "32", "--f", "1", "--b", "2"), 21),
    (("zb1p", "--pp", "8", "--microbatches", "32", "--f", "1", "--b", "2", "--w", "1"), 7),  # (PP-1)(F+B-2W)
    (("dualpipev", "--pp", "8", "--microbatches", "40", "--f", "1", "--b", "2", "--w", "1", "--fb", "3"), 14),
])
def test_done_when_figures(runner, args, bubble):
    out = _json(runner, *args)
    assert max(out["bubble_per_rank"]) == bubble == out["bubble_max"] == out["formula_bubble"]
    assert len(out["bubble_per_rank"]) == len(out["peak_activations_per_rank"]) == int(args[2])
    assert out["makespan"] > 0


def test_json_peaks(runner):
    assert _json(runner, "1f1b", "--pp", "8", "--microbatches", "32")["peak_activations_per_rank"][0] == 8
    assert max(_json(runner, "dualpipe", "--pp", "16", "--microbatches", "40")["peak_activations_per_rank"]) <= 17


def test_interleaved_with_layers(runner):
    out = _json(runner, "interleaved-1f1b", "--pp", "4", "--vpp", "2", "--microbatches", "8", "--layers", "32")
    assert out["num_stages"] == 8 and out["bubble_max"] == 3 * (1 + 2)


def test_human_output_has_grid_bubbles_and_peaks(runner):
    r = runner.invoke(main, ["schedule", "dualpipe", "--pp", "4", "--microbatches", "8", "--text"])
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert [ln.split()[0] for ln in lines if ln.startswith("r") and not ln.startswith("rank")][:4] == \
        ["r0", "r1", "r2", "r3"]
    assert "bubble: max 2 per rank, total 8" in r.stdout
    assert "peak activations" in r.stdout
    assert "# dualpipe ranks=4" in r.stdout  # --text


def test_plot_writes_an_image(runner, tmp_path):
    out = tmp_path / "g.png"
    r = runner.invoke(main, ["schedule", "zb1p", "--pp", "4", "--microbatches", "8", "--plot", str(out), "--json"])
    assert r.exit_code == 0, r.output
    assert out.read_bytes()[:4] == b"\x89PNG"
    json.loads(r.stdout)  # --json still prints only the JSON object


@pytest.mark.parametrize(("args", "message"), [
    (("dualpipe", "--pp", "3", "--microbatches", "12"), "even number of pipeline ranks"),
    (("dualpipe", "--pp", "4", "--microbatches", "6"), "num_microbatches >= 2 * pp = 8"),
    (("dualpipev", "--pp", "4", "--microbatches", "7"), "num_microbatches >= 2 * pp = 8"),
    (("interleaved-1f1b", "--pp", "4", "--vpp", "2", "--microbatches", "8", "--layers", "30"),
     "--layers: interleaved-1f1b needs the layers divisible by pp x vpp"),
    (("interleaved-1f1b", "--pp", "4", "--microbatches", "8"), "vpp >= 2"),
    (("1f1b", "--pp", "4", "--microbatches", "8", "--w", "3"), "must be <= b"),
    (("1f1b", "--pp", "4", "--microbatches", "8", "--f", "-1"), "must be >= 0"),
    (("1f1b", "--pp", "4", "--microbatches", "8", "--f", "nan"), "finite"),
    (("1f1b", "--pp", "4", "--microbatches", "8", "--plot", "x.unknownext"), "unsupported image type"),
    (("1f1b", "--pp", "4", "--microbatches", "8", "--plot", "/no/such/dir/x.png"), "does not exist"),
    (("zigzag", "--pp", "4", "--microbatches", "8"), "zigzag"),
])
def test_bad_input_exits_2_naming_the_precondition(runner, args, message):
    r = runner.invoke(main, ["schedule", *args])
    assert r.exit_code == 2, r.output
    assert message in r.stderr
    assert "Traceback" not in r.output
