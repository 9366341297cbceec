"""Linear probe on frozen features, results files, and the linear-probe command line."""
import json

import pytest
import torch

from seed_det.data.synthetic.digits import write_digits_imagefolder
from seed_core.evaluation import train_linear_probe
from seed_core.evaluation.linear import standardize
from seed_core.results import read_rows

from conftest import load_script



def separable_problem(seed=0, n_train=600, n_val=300, dim=32, classes=4, scale=5.0):
    """Labels = argmax of a fixed random linear map, with points near a boundary removed (margin),
    and features given very different scales per dimension (what standardisation is for)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(dim, classes, generator=g)
    x = torch.randn(4 * (n_train + n_val), dim, generator=g)
    logits = x @ w
    top2 = logits.topk(2, dim=1).values
    keep = (top2[:, 0] - top2[:, 1]) > 3.0
    x, y = x[keep][:n_train + n_val], logits[keep].argmax(1)[:n_train + n_val]
    x = x * torch.logspace(-2, 2, dim) * scale + 3.0
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


@pytest.mark.parametrize("optimizer", ["lbfgs", "sgd"])
def test_probe_reaches_near_100_on_linearly_separable_features(optimizer):
    xtr, ytr, xva, yva = separable_problem()
    res = train_linear_probe(xtr, ytr, xva, yva, num_classes=4, optimizer=optimizer)
    assert res.train_top1 >= 99.5
    assert res.top1 >= 99.0
    assert res.top5 == 100.0


def test_probe_is_at_chance_on_random_labels():
    g = torch.Generator().manual_seed(3)
    xtr, xva = torch.randn(400, 16, generator=g), torch.randn(400, 16, generator=g)
    ytr, yva = torch.randint(0, 10, (400,), generator=g), torch.randint(0, 10, (400,), generator=g)
    res = train_linear_probe(xtr, ytr, xva, yva, num_classes=10)
    assert res.top1 < 25.0  # chance is 10%; a leak of val labels would show here


@pytest.mark.parametrize("optimizer", ["lbfgs", "sgd"])
def test_probe_is_deterministic(optimizer):
    xtr, ytr, xva, yva = separable_problem(seed=1, scale=0.05)  # tiny margins: results depend on details
    xva = xva + 0.5 * torch.randn(xva.shape, generator=torch.Generator().manual_seed(0)) * xva.std(0)
    a = train_linear_probe(xtr, ytr, xva, yva, 4, optimizer=optimizer, epochs=3, seed=5)
    b = train_linear_probe(xtr, ytr, xva, yva, 4, optimizer=optimizer, epochs=3, seed=5)
    assert a == b


def test_probe_works_inside_inference_mode():
    xtr, ytr, xva, yva = separable_problem(seed=2)
    with torch.inference_mode():
        res = train_linear_probe(xtr, ytr, xva, yva, 4, epochs=5)
    assert res.top1 >= 97.0


def test_standardize_uses_training_statistics():
    train = torch.tensor([[0.0, 10.0], [2.0, 30.0]])
    val = torch.tensor([[1.0, 20.0], [4.0, 20.0]])
    s_train, s_val = standardize(train, val)
    torch.testing.assert_close(s_train.mean(0), torch.zeros(2))
    torch.testing.assert_close(s_val[0], torch.zeros(2))
    assert s_val[1, 0].item() == pytest.approx(3 / train[:, 0].std().item())


def test_probe_rejects_bad_arguments():
    xtr, ytr, xva, yva = separable_problem()
    with pytest.raises(ValueError, match="optimizer"):
        train_linear_probe(xtr, ytr, xva, yva, 4, optimizer="adam")
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        train_linear_probe(xtr, ytr, xva, yva, 2)


def test_eval_linear_cli_end_to_end_reuses_cached_features(tmp_path, capsys):
    data = tmp_path / "digits"
    write_digits_imagefolder(data, size=32, max_per_class=10)
    tool = load_script("tools/eval_linear.py")
    out, csv_path, cache = tmp_path / "lin.json", tmp_path / "results.csv", tmp_path / "cache"
    args = ["--arch", "resnet18", "--random-init", "--train", str(data / "train"), "--val", str(data / "val"),
            "--image-size", "32", "--batch-size", "64", "--workers", "0", "--cache-dir", str(cache),
            "--no-progress", "--output", str(out), "--results-csv", str(csv_path)]
    assert tool.main(args) == 0
    first = json.loads(out.read_text())
    cached = sorted(p.stat().st_mtime_ns for p in cache.glob("*.pt"))
    assert len(cached) == 2  # train and val
    assert tool.main(args) == 2  # the metrics file of the first run is not replaced silently
    assert "exists already; pass --overwrite" in capsys.readouterr().err
    assert tool.main(args + ["--overwrite"]) == 0
    second = json.loads(out.read_text())
    assert [json.loads(p.read_text()) for p in tmp_path.glob("previous-*/lin.json")] == [first]  # moved aside
    assert sorted(p.stat().st_mtime_ns for p in cache.glob("*.pt")) == cached  # read, not rewritten
    assert first["tool"] == "eval_linear" and first["optimizer"] == "lbfgs"
    assert (first["num_train"], first["num_val"]) == (70, 30)
    assert first["top1"] == second["top1"] and 0.0 <= first["top1"] <= first["top5"] <= 100.0
    assert first["train_top1"] == 100.0  # 512 features, 70 samples: separable
    assert "linear probe top-1" in capsys.readouterr().out
    kind, rows = read_rows(csv_path)
    assert kind == "linear" and [r["mode"] for r in rows] == ["eval-only", "eval-only"]
    assert rows[0]["top1"] == f"{first['top1']:.2f}" and rows[0]["weights"] == "random-init(seed=0)"
