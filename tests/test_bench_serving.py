"""bench.serving runs end to end: this server and the LitServe peer both answer every request, side by side.

Figures are not asserted (a shared 2-core machine is too noisy for that); what is checked is that the benchmark
measures what it claims: both servers up, real 200 answers from each, the in-process limit, the report's rows.
"""
import json
import subprocess
import sys

from bench.servers import REPO_ROOT


def test_bench_serving_compares_this_server_with_litserve(tmp_path):
    out = tmp_path / "serving.json"
    completed = subprocess.run(
        [sys.executable, "-m", "bench.serving", "--tasks", "digits", "sentiment", "--concurrency", "1", "8",
         "--rounds", "1", "--requests", "96", "--limit-s", "0.3", "--out", str(out)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    figures = json.loads(out.read_text())
    measured = {(r["server"], r["task"], r["concurrency"]): r for r in figures["results"]}
    assert set(measured) == {(server, task, c) for server in ("this", "litserve")
                             for task in ("digits", "sentiment") for c in (1, 8)}
    for result in measured.values():
        assert result["errors"] == 0, result
        assert result["throughput"] > 0 and 0 < result["p50_ms"] <= result["p99_ms"]
    assert {limit["task"] for limit in figures["limits"]} == {"digits", "sentiment"}
    assert all(limit["items_per_s"] > 0 and limit["one_item_p50_ms"] > 0 for limit in figures["limits"])
    report = completed.stdout
    assert "| digits | 8 |" in report and "| sentiment | 1 |" in report
    assert "request-path overhead at c=1" in report
