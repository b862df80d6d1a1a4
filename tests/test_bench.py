"""The benchmark harness runs in --quick mode and writes a well-formed report (no timing asserts)."""

import json

from tools.bench import main


def test_quick_bench_writes_report(tmp_path, sample_root):
    code = main(["--quick", "--out", str(tmp_path), "--only", "ensemble", "gradcam", "vahadane", "dashboard"])
    report = json.loads((tmp_path / "report.json").read_text())
    assert code == 0, [r for r in report["results"] if "error" in r]
    names = [r["name"] for r in report["results"]]
    assert len(names) == 4 and all("seconds" in r and "ok" in r for r in report["results"])
    assert report["machine"]["cores"] >= 1 and report["machine"]["tensorflow"]
    ens = report["results"][0]
    assert ens["soft_8000_ms"] > 0 and ens["hard_1000000_ms"] > 0
    markdown = (tmp_path / "report.md").read_text()
    assert markdown.count("\n|") >= 6 and "make bench-quick" in markdown
