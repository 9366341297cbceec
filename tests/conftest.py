import glob
import json
import os
import sys

import numpy as np
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
torch.set_num_threads(min(2, torch.get_num_threads()))


def load_script(relative_path):
    """Import a command-line script (tools/..., benchmarks/...) as a module to call its main()."""
    import importlib.util
    path = os.path.join(ROOT, relative_path)
    name = os.path.splitext(os.path.basename(path))[0] + "_script"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_images(folder, n, size=32, seed=0, classes=2):
    """Small random-texture PNGs in ImageFolder layout."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        d = os.path.join(folder, f"class{i % classes}")
        os.makedirs(d, exist_ok=True)
        base = rng.integers(0, 255, size=(1, 1, 3))
        noise = rng.integers(0, 60, size=(size, size, 3))
        arr = np.clip(base + noise, 0, 255).astype(np.uint8)
        p = os.path.join(d, f"img{i:04d}.png")
        Image.fromarray(arr).save(p)
        paths.append(p)
    return paths


# Files the image policy (seed_core.images) must turn into one error naming the file: the kinds a
# user meets, each in the format given by the path's extension.
BAD_IMAGE_KINDS = ("zero-byte", "truncated", "not-an-image", "oversize")


def write_bad_image(path, kind, size=(32, 24)):
    """Write an unreadable image of `kind` (BAD_IMAGE_KINDS) at `path`; returns the path as a string."""
    from PIL import Image
    path = str(path)
    if kind == "zero-byte":
        open(path, "wb").close()
    elif kind == "not-an-image":
        with open(path, "w") as f:
            f.write("<html>a saved web page, not a picture</html>")
    elif kind == "truncated":  # a whole header, half the pixel data: only a full decode finds it
        rng = np.random.default_rng(0)
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
        with open(path, "rb") as f:
            raw = f.read()
        with open(path, "wb") as f:
            f.write(raw[:len(raw) * 2 // 3])
    elif kind == "oversize":  # a decompression bomb: small on disk, 90 M pixels (1 bit each) in memory
        Image.new("1", (10_000, 9_000)).save(path, format="PNG")
    else:
        raise ValueError(kind)
    return path


def moco_state(arch="resnet18", head_dim=128, v2=True, seed=0):
    """A MoCo checkpoint with the real key layout (module.encoder_q.* / encoder_k / queue)."""
    from seed_core.encoders import build_backbone
    torch.manual_seed(seed)
    net, dim = build_backbone(arch)
    sd = {}
    for prefix in ("module.encoder_q.", "module.encoder_k."):
        for k, v in net.state_dict().items():
            sd[prefix + k] = v.clone()
        if v2:
            sd[prefix + "fc.0.weight"] = torch.randn(dim, dim) * 0.05
            sd[prefix + "fc.0.bias"] = torch.zeros(dim)
            sd[prefix + "fc.2.weight"] = torch.randn(head_dim, dim) * 0.05
            sd[prefix + "fc.2.bias"] = torch.zeros(head_dim)
        else:
            sd[prefix + "fc.weight"] = torch.randn(head_dim, dim) * 0.05
            sd[prefix + "fc.bias"] = torch.zeros(head_dim)
    sd["module.queue"] = torch.randn(head_dim, 64)
    return {"state_dict": sd, "epoch": 200, "arch": arch}


@pytest.fixture
def images(tmp_path):
    root = tmp_path / "images"
    write_images(str(root), 24)
    return str(root)


@pytest.fixture
def moco_teacher(tmp_path):
    path = tmp_path / "moco_r18.pth"
    torch.save(moco_state("resnet18"), path)
    return str(path)


def tiny_opts(images, teacher, out, **extra):
    """KEY VALUE overrides for a run that takes seconds on CPU."""
    opts = {
        "MODEL.STUDENT.ARCH": "resnet18", "MODEL.TEACHER.ARCH": "resnet18",
        "MODEL.TEACHER.WEIGHTS": teacher or "", "DATA.ROOT": images, "DATA.IMAGE_SIZE": 32,
        "DATA.NUM_WORKERS": 0, "SOLVER.BATCH_SIZE": 8, "QUEUE.SIZE": 20, "SOLVER.EPOCHS": 2,
        "SOLVER.WARMUP_EPOCHS": 0.5, "SOLVER.BASE_LR": 0.5, "OUTPUT_DIR": out, "TRAIN.LOG_PERIOD": 1,
        "TRAIN.PROGRESS": False, "TRAIN.PRECISION": "fp32",
    }
    opts.update(extra)
    flat = []
    for k, v in opts.items():
        flat += [k, str(v)]
    return flat


class FileServer:
    """Crafted files served over HTTP on 127.0.0.1 (never the internet), with Range requests, for
    download tests. `files` maps URL paths to bytes; `requests` records (path, Range header);
    `cut_after` bytes are sent before the next response is cut off; `honour_range` False answers
    every request with the whole file."""

    def __init__(self):
        import http.server
        import threading
        self.files, self.requests, self.cut_after, self.honour_range = {}, [], None, True
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                rng = self.headers.get("Range")
                server.requests.append((self.path, rng))
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                start = int(rng[len("bytes="):].rstrip("-")) if rng and server.honour_range else 0
                if start >= len(data) and start:
                    self.send_error(416)
                    return
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                body = data[start:]
                if server.cut_after is not None:
                    body, server.cut_after = body[:server.cut_after], None
                    self.close_connection = True
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def file_server():
    server = FileServer()
    yield server
    server.close()


def write_backbone_export(folder, arch, seed=0):
    """student_backbone.pth + meta.json of a randomly initialised `arch` whose BatchNorm statistics
    are not the defaults (so an export that ignored them would show); returns the network."""
    from seed_core.encoders import build_backbone
    torch.manual_seed(seed)
    net, dim = build_backbone(arch)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    os.makedirs(folder, exist_ok=True)
    torch.save(net.state_dict(), os.path.join(folder, "student_backbone.pth"))
    with open(os.path.join(folder, "meta.json"), "w") as f:
        json.dump({"arch": arch, "feature_dim": dim}, f)
    return net.eval(), dim


# timm students in detection (tests/seed_det/test_timm_backbones.py and test_timm_d2.py)
TIMM_FAMILIES = ["mobilenetv3_large_100", "efficientnet_b0", "mobilenetv3_small_050"]
TIMM_SHORT = {"mnv3l": "mobilenetv3_large_100", "effb0": "efficientnet_b0"}  # config name -> timm name
TIMM_CONFIGS = sorted(os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "configs", "voc_*_fpn_*.yaml"))
                      + glob.glob(os.path.join(ROOT, "configs", "coco_*_fpn_1x_*.yaml"))
                      if not os.path.basename(p).split("_")[1].startswith("r"))


def export_timm_student(folder, arch, seed=0):
    """A distilled student as seed_core writes it: student_backbone.pth (timm names, no projection
    head) + meta.json, with BN statistics that differ from their initial values; returns the .pth."""
    from seed_core.encoders import build_student
    from seed_core.export import write_backbone
    torch.manual_seed(seed)
    student = build_student(arch, 16)
    with torch.no_grad():
        for m in student.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.weight.uniform_(0.5, 1.5)
    os.makedirs(folder, exist_ok=True)
    return write_backbone(student.state_dict(), str(folder), {"arch": arch, "feature_dim": student.feature_dim})


@pytest.fixture(scope="module")
def timm_students(tmp_path_factory):
    """arch -> (student_backbone.pth, converted Detectron2 .pkl) for each of TIMM_FAMILIES, made once per module."""
    from seed_det.convert import convert_to_d2
    root = tmp_path_factory.mktemp("timm_students")
    out = {}
    for arch in TIMM_FAMILIES:
        pth = export_timm_student(root / arch, arch)
        pkl = str(root / f"{arch}.pkl")
        convert_to_d2(pth, pkl)
        out[arch] = (pth, pkl)
    return out


@pytest.fixture(scope="module")
def shapes_det(tmp_path_factory):
    """A tiny generated detection dataset (VOC and COCO layouts): 4 train, 2 val images of 64 px."""
    from seed_det.data.synthetic.shapes import write_shapes_dataset
    out = str(tmp_path_factory.mktemp("shapes_det"))
    write_shapes_dataset(out, num_train=4, num_val=2, size=64, seed=0)
    return out


def shapes_det_opts(name, shapes, out, weights):
    """KEY VALUE overrides that train a shipped detection config `name` on `shapes` (COCO json for a
    coco_* config, VOC otherwise) into `out`, starting from `weights`."""
    if name.startswith("coco"):
        ann, img = os.path.join(shapes, "annotations"), os.path.join(shapes, "JPEGImages")
        data = ["DATASETS.COCO_JSON", repr([["tr", f"{ann}/instances_train.json", img],
                                            ["te", f"{ann}/instances_val.json", img]])]
    else:
        data = ["DATASETS.VOC", repr([["tr", shapes, "train", 2007], ["te", shapes, "val", 2007]])]
    return data + ["DATASETS.TRAIN", "('tr',)", "DATASETS.TEST", "('te',)", "OUTPUT_DIR", str(out),
                   "MODEL.WEIGHTS", weights]


def onnx_runtime_session(path):
    """A plain onnxruntime CPU session on one thread, independent of seed_core.onnx_export's."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
