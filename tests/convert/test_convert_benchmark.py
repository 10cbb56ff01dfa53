"""benchmarks/convert.py stays runnable: its --tiny CPU smoke test prints the table with every stage."""

import importlib.util
from pathlib import Path

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "convert.py"


def test_tiny_benchmark_prints_one_row_per_setting(capsys):
    spec = importlib.util.spec_from_file_location("convert_benchmark", BENCHMARK)
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    assert benchmark.main(["--tiny", "--device", "cpu", "--slices", "3", "--side", "32", "--steps", "1,2",
                           "--batch-sizes", "2"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 1 |")
            or line.startswith("| 2 |")]
    assert len(rows) == 2
    for row in rows:
        cells = [float(cell) for cell in row.strip("|").split("|")]
        total, stages = cells[2], cells[4:10]
        assert total > 0 and all(value >= 0 for value in stages)
        assert sum(stages) <= total + 0.005 * len(stages)  # stages lie within the total (printed rounded)
