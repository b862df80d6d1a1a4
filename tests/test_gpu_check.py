"""`make gpu-check` says plainly when there is no GPU (the measurement itself needs one; README "GPU check")."""

from tools import gpu_check
from pipeline.ml import precision


def test_without_a_gpu_it_says_so_and_fails(monkeypatch, capsys):
    monkeypatch.setattr(precision, "gpu_present", lambda: False)
    assert gpu_check.main([]) == 1
    assert "NO GPU FOUND" in capsys.readouterr().out
