"""Weighted k-NN, feature caching, backbone loading and the k-NN command line."""
import json
import math
import os

import pytest
import torch

from seed_core.checkpoint_io import CheckpointError
from seed_core.results import read_rows
from seed_det.data.synthetic.digits import write_digits_imagefolder
from seed_core.encoders import build_backbone
from seed_core.evaluation import features as features_mod
from seed_core.evaluation import knn_class_scores, knn_evaluate, load_backbone, load_or_compute_features, topk_accuracy

from conftest import load_script



@pytest.fixture(scope="module")
def tiny_digits(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits") / "digits"
    write_digits_imagefolder(root, size=32, seed=0, val_fraction=0.3, max_per_class=10)
    return root


# ---------------------------------------------------------------- k-NN on constructed features

def test_separated_clusters_are_classified_perfectly():
    g = torch.Generator().manual_seed(0)
    centers = torch.eye(16)[:5] * 10  # orthogonal class means, far apart relative to the noise
    train_y = torch.arange(5).repeat_interleave(40)
    val_y = torch.arange(5).repeat_interleave(10)
    train_x = centers[train_y] + torch.randn(len(train_y), 16, generator=g)
    val_x = centers[val_y] + torch.randn(len(val_y), 16, generator=g)
    acc = knn_evaluate(train_x, train_y, val_x, val_y, num_classes=5)
    assert acc == {"top1": 100.0, "top5": 100.0}


def test_known_accuracy_below_100():
    # Ten classes, 20 training points near each axis e_c. The validation set has
    #   20 clean queries on their own axis                     -> top-1 hit
    #    5 queries on e_c + 0.5 e_{c+1} labelled c+1            -> top-1 miss (c wins), top-5 hit
    #    5 queries on e_0 + ... + e_4 labelled 9                -> class 9 gets only exp(0)-weight
    #      votes, below classes 0..4                            -> top-1 and top-5 miss
    # so top-1 = 20/30 and top-5 = 25/30 exactly, with the default k=200 (all 200 training points).
    g = torch.Generator().manual_seed(1)
    eye = torch.eye(10)
    train_y = torch.arange(10).repeat_interleave(20)
    train_x = eye[train_y] + 0.01 * torch.randn(200, 10, generator=g).abs()
    clean_y = torch.arange(20) % 10
    near = torch.arange(5)
    val_x = torch.cat([eye[clean_y], eye[near] + 0.5 * eye[near + 1], eye[:5].sum(0).expand(5, 10)])
    val_y = torch.cat([clean_y, near + 1, torch.full((5,), 9)])
    acc = knn_evaluate(train_x, train_y, val_x, val_y, num_classes=10, k=200, temperature=0.07)
    assert acc["top1"] == pytest.approx(100 * 20 / 30)
    assert acc["top5"] == pytest.approx(100 * 25 / 30)


def test_votes_are_weighted_by_similarity_and_temperature():
    # One class-1 neighbour at cosine 0.9 against two class-0 neighbours at cosine 0.8.
    # T=0.07: exp(0.9/T) > 2 exp(0.8/T), so class 1 wins; T=1: 2 e^0.8 > e^0.9, class 0 wins
    # (the majority vote of an unweighted k-NN).
    train_x = torch.tensor([[0.9, math.sqrt(1 - 0.81)], [0.8, 0.6], [0.8, -0.6]])
    train_y = torch.tensor([1, 0, 0])
    query = torch.tensor([[1.0, 0.0]])
    sharp = knn_class_scores(train_x, train_y, query, num_classes=2, k=3, temperature=0.07)
    flat = knn_class_scores(train_x, train_y, query, num_classes=2, k=3, temperature=1.0)
    assert sharp.argmax(1).item() == 1
    assert flat.argmax(1).item() == 0
    ratio = flat[0, 0] / flat[0, 1]
    assert ratio.item() == pytest.approx(2 * math.exp(0.8) / math.exp(0.9), rel=1e-5)


def reference_scores(train_x, train_y, query_x, num_classes, k, temperature):
    """Direct transcription of the rule, one query at a time."""
    train_n = train_x / train_x.norm(dim=1, keepdim=True)
    out = torch.zeros(len(query_x), num_classes, dtype=torch.float64)
    for i, q in enumerate(query_x):
        sims = (train_n.double() @ (q / q.norm()).double()).tolist()
        nearest = sorted(range(len(sims)), key=lambda j: -sims[j])[:k]
        for j in nearest:
            out[i, train_y[j]] += math.exp(sims[j] / temperature)
    return out


@pytest.mark.parametrize("chunk_size", [1, 7, 4096])
def test_chunked_scores_match_reference(chunk_size):
    g = torch.Generator().manual_seed(2)
    train_x, query_x = torch.randn(300, 8, generator=g), torch.randn(23, 8, generator=g)
    train_y = torch.randint(0, 6, (300,), generator=g)
    got = knn_class_scores(train_x, train_y, query_x, 6, k=50, temperature=0.1, chunk_size=chunk_size)
    ref = reference_scores(train_x, train_y, query_x, 6, k=50, temperature=0.1)
    # Rows are scaled per query for overflow safety: compare vote shares.
    torch.testing.assert_close(got.double() / got.sum(1, keepdim=True), ref / ref.sum(1, keepdim=True),
                               rtol=1e-4, atol=1e-6)


def test_k_larger_than_train_set_and_small_temperature_stay_finite():
    train_x, train_y = torch.eye(3), torch.tensor([0, 1, 2])
    scores = knn_class_scores(train_x, train_y, torch.eye(3), 3, k=200, temperature=1e-3)
    assert torch.isfinite(scores).all()
    assert scores.argmax(1).tolist() == [0, 1, 2]


def test_topk_accuracy_with_fewer_classes_than_k():
    scores = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1]])
    acc = topk_accuracy(scores, torch.tensor([1, 2]), ks=(1, 5))
    assert acc == {1: 50.0, 5: 100.0}


# ---------------------------------------------------------------- feature cache

def test_feature_cache_is_reused_and_invalidated(tiny_digits, tmp_path, monkeypatch):
    backbone = load_backbone(arch="resnet18", random_init=True, seed=0)
    cache = tmp_path / "cache"
    opts = dict(image_size=32, batch_size=64, cache_dir=cache, progress=False)
    first = load_or_compute_features(backbone, tiny_digits / "train", **opts)
    assert not first.from_cache and first.features.shape == (70, 512)
    assert first.classes == [str(c) for c in range(10)]
    assert len(list(cache.glob("*.pt"))) == 1

    def no_extraction(*args, **kwargs):
        raise AssertionError("features were recomputed although cached")

    real_extract = features_mod.extract_features
    monkeypatch.setattr(features_mod, "extract_features", no_extraction)
    again = load_or_compute_features(backbone, tiny_digits / "train", **opts)
    assert again.from_cache
    assert torch.equal(again.features, first.features) and torch.equal(again.labels, first.labels)

    # Anything the features depend on changes the key: transform, weights, image files.
    monkeypatch.setattr(features_mod, "extract_features", real_extract)
    assert not load_or_compute_features(backbone, tiny_digits / "train", **{**opts, "image_size": 24}).from_cache
    other = load_backbone(arch="resnet18", random_init=True, seed=1)
    assert not load_or_compute_features(other, tiny_digits / "train", **opts).from_cache
    # A damaged cache file is recomputed and replaced, not trusted.
    for f in cache.glob("*.pt"):
        f.write_bytes(b"truncated")
    assert not load_or_compute_features(backbone, tiny_digits / "train", **opts).from_cache
    assert load_or_compute_features(backbone, tiny_digits / "train", **opts).from_cache
    some_png = next((tiny_digits / "train" / "3").glob("*.png"))
    st = os.stat(some_png)
    os.utime(some_png, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    try:
        assert not load_or_compute_features(backbone, tiny_digits / "train", **opts).from_cache
    finally:
        os.utime(some_png, ns=(st.st_atime_ns, st.st_mtime_ns))


# ---------------------------------------------------------------- loading exported backbones

def export(directory, arch="resnet18", meta=True, seed=0):
    torch.manual_seed(seed)
    net, dim = build_backbone(arch)
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), directory / "student_backbone.pth")
    if meta:
        (directory / "meta.json").write_text(json.dumps({"arch": arch, "feature_dim": dim}))
    return net


def test_backbone_loads_from_directory_pth_or_explicit_arch(tmp_path):
    net = export(tmp_path / "exp")
    by_dir = load_backbone(tmp_path / "exp")
    by_pth = load_backbone(tmp_path / "exp" / "student_backbone.pth")
    (tmp_path / "exp" / "meta.json").unlink()
    by_arch = load_backbone(tmp_path / "exp" / "student_backbone.pth", arch="resnet18")
    for loaded in (by_dir, by_pth, by_arch):
        assert loaded.arch == "resnet18" and loaded.feature_dim == 512 and not loaded.model.training
        torch.testing.assert_close(loaded.model.state_dict(), net.state_dict())
    assert by_dir.checksum == by_pth.checksum == by_arch.checksum


def test_backbone_errors_name_the_problem(tmp_path):
    export(tmp_path / "nometa", meta=False)
    with pytest.raises(ValueError, match="--arch"):
        load_backbone(tmp_path / "nometa")
    export(tmp_path / "wrong")
    (tmp_path / "wrong" / "meta.json").write_text(json.dumps({"arch": "resnet34"}))
    with pytest.raises(ValueError, match=r"missing keys: layer1\.2\.") as err:
        load_backbone(tmp_path / "wrong")
    assert "resnet34" in str(err.value)
    state = torch.load(tmp_path / "nometa" / "student_backbone.pth", weights_only=True)
    state["layer4.1.bn2.weight"] = torch.ones(3)
    torch.save(state, tmp_path / "shape.pth")
    with pytest.raises(ValueError, match=r"layer4\.1\.bn2\.weight \(3,\) vs \(512,\)"):
        load_backbone(tmp_path / "shape.pth", arch="resnet18")
    torch.save({"module." + k: v for k, v in state.items()}, tmp_path / "ddp.pth")
    with pytest.raises(ValueError, match="module."):
        load_backbone(tmp_path / "ddp.pth", arch="resnet18")
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.pth"):
        load_backbone(tmp_path / "garbage.pth", arch="resnet18")
    with pytest.raises(FileNotFoundError, match="student_backbone.pth"):
        load_backbone(tmp_path)
    with pytest.raises(ValueError, match="--arch"):
        load_backbone(random_init=True)


def test_random_init_is_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = load_backbone(arch="resnet18", random_init=True, seed=0)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert a.checksum == load_backbone(arch="resnet18", random_init=True, seed=0).checksum
    assert a.checksum != load_backbone(arch="resnet18", random_init=True, seed=1).checksum
    assert a.source == "random-init(seed=0)"


# ---------------------------------------------------------------- command line

def test_eval_knn_cli_end_to_end(tiny_digits, tmp_path, capsys):
    tool = load_script("tools/eval_knn.py")
    out, csv_path = tmp_path / "knn.json", tmp_path / "results.csv"
    args = ["--arch", "resnet18", "--random-init", "--train", str(tiny_digits / "train"),
            "--val", str(tiny_digits / "val"), "--image-size", "32", "--batch-size", "64", "--workers", "0",
            "--cache-dir", str(tmp_path / "cache"), "--no-progress", "--output", str(out),
            "--results-csv", str(csv_path)]
    assert tool.main(args) == 0
    metrics = json.loads(out.read_text())
    assert metrics["tool"] == "eval_knn" and metrics["arch"] == "resnet18"
    assert (metrics["num_train"], metrics["num_val"], metrics["num_classes"]) == (70, 30, 10)
    assert (metrics["k"], metrics["temperature"]) == (200, 0.07)
    assert 0.0 <= metrics["top1"] <= metrics["top5"] <= 100.0
    assert "k-NN top-1" in capsys.readouterr().out
    kind, rows = read_rows(csv_path)
    assert kind == "knn" and len(rows) == 1
    assert (rows[0]["weights"], rows[0]["arch"], rows[0]["mode"], rows[0]["top1"], rows[0]["top5"]) == (
        "random-init(seed=0)", "resnet18", "eval-only", f"{metrics['top1']:.2f}", f"{metrics['top5']:.2f}")
    assert rows[0]["dataset"].endswith("val") and rows[0]["output"] == str(out)


def test_eval_knn_cli_reports_bad_input_without_traceback(tmp_path, capsys):
    tool = load_script("tools/eval_knn.py")
    assert tool.main(["--backbone", str(tmp_path / "absent"), "--train", str(tmp_path), "--val", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err
