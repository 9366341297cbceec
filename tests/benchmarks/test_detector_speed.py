"""benchmarks/detector_speed.py: every detector of a suite builds from its config and is timed;
a quick run writes no results file."""
from conftest import load_script


def test_quick_run_times_every_detector_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "speed.json"
    assert load_script("benchmarks/detector_speed.py").main(["--suite", "digits", "--quick", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| R18-FPN |" in text and "| MobileNetV3-Small-0.5-FPN |" in text and "1.00×" in text
    assert not out.exists()
