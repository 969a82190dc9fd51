#!/usr/bin/env python3
"""Golden outputs of facenet-pytorch 2.6.0's MTCNN for the Rust port (perception crate).

Writes perception/tests/golden/mtcnn.json with three parts:

  detect    per image of shared/data/faces-fullframe/*.jpg and per
            min_face_size in (20, 40): MTCNN(keep_all=True, device='cpu',
            thresholds=[0.6,0.7,0.7], factor=0.709, post_process=False)
            .detect(img, landmarks=True) on the pixels *our* decoder gives (the `image`
            crate, through `cargo run -p perception --example decode`, into a temporary
            folder; PIL's libjpeg-turbo differs by a few levels per pixel, enough to move
            a cascade's boxes by pixels) -> boxes [x1,y1,x2,y2], score, 5 landmarks [x,y]
            (order: left eye, right eye, nose, left mouth corner, right mouth corner, as
            seen in the image), faces in facenet-pytorch's output order (box area descending,
            select_largest=True). Also a decoded-pixel checksum (so a different JPEG decoder can
            be told apart from a detector bug), the scale pyramid, and the number of boxes
            surviving each stage (facenet-pytorch's detect_face instrumented by wrapping its
            module-level helpers, the algorithm itself untouched).
  nets      PNet / RNet / ONet outputs for a deterministic input (formula in the JSON),
            independent of JPEG decoding; outputs rounded to 6 decimals, to check to 1e-4.
  resample  facenet-pytorch's imresample (F.interpolate mode='area' == adaptive_avg_pool2d).

All other floats are rounded to 4 decimals. The nets are checked to hold exactly the weights of
assets/models/mtcnn.safetensors (tools/mtcnn_convert.py) before anything is written.

Usage (environment: see tools/mtcnn_convert.py):

    nice -n 10 tools/.venv-mtcnn/bin/python tools/mtcnn_reference.py
    # SHARED_DATA=/path/to/shared/data to override ../shared/data
"""
import argparse
import json
import subprocess
import tempfile
import glob
import math
import os

import numpy as np
from PIL import Image

from mtcnn_common import REPO, SHARED, dumps, make_mtcnn, r4, setup_torch, versions

torch = setup_torch()
import facenet_pytorch.models.utils.detect_face as dfm  # noqa: E402

OUT = os.path.join(REPO, "perception", "tests", "golden", "mtcnn.json")
SAFETENSORS = os.path.join(REPO, "assets", "models", "mtcnn.safetensors")
NET_FORMULA = "x[n,c,h,w] = sin(0.37*n + 1.3*c + 0.11*h + 0.07*w) * 0.9 (computed in float64, then cast to float32)"
RESAMPLE_FORMULA = "x[0,c,h,w] = float((h*7 + w*13 + c*29) % 256), shape 1x3x37x53, float32"


class Trace:
    """Wraps detect_face's module-level helpers to count boxes through the cascade."""

    def __init__(self):
        self.events = []
        self._orig = {}

    def install(self):
        for name in ("generateBoundingBox", "batched_nms", "batched_nms_numpy", "pad"):
            self._orig[name] = getattr(dfm, name)
            setattr(dfm, name, self._wrap(name, self._orig[name]))

    def uninstall(self):
        for name, f in self._orig.items():
            setattr(dfm, name, f)

    def _wrap(self, name, f):
        def g(*a, **kw):
            out = f(*a, **kw)
            if name == "generateBoundingBox":
                self.events.append(("gen", float(a[2]), int(out[0].shape[0])))
            elif name in ("batched_nms", "batched_nms_numpy"):
                self.events.append(("nms", float(a[3]), int(a[0].shape[0]), int(out.shape[0])))
            else:  # pad(boxes, w, h): first call = boxes into RNet, second = into ONet
                self.events.append(("pad", int(a[0].shape[0])))
            return out
        return g

    def summary(self):
        ev = self.events
        gens = [e for e in ev if e[0] == "gen"]
        nms = [e for e in ev if e[0] == "nms"]
        s = {
            "pnet_candidates": [e[2] for e in gens],          # per scale, prob >= 0.6
            "pnet_after_scale_nms": [e[3] for e in nms[:len(gens)]],  # per scale, IoU 0.5
            "pnet_after_nms": nms[len(gens)][3],              # across scales, IoU 0.7 -> RNet
        }
        rest = nms[len(gens) + 1:]
        pads = [e for e in ev if e[0] == "pad"]
        # RNet/ONet stages run only if boxes remain; an NMS input = boxes above threshold.
        s["rnet_pass"] = rest[0][2] if len(rest) > 0 else 0    # prob > 0.7
        s["rnet_after_nms"] = rest[0][3] if len(rest) > 0 else 0  # IoU 0.7 -> ONet
        s["onet_in"] = pads[1][1] if len(pads) > 1 else 0
        s["onet_pass"] = rest[1][2] if len(rest) > 1 else 0    # prob > 0.7
        s["final"] = rest[1][3] if len(rest) > 1 else 0        # 'Min' overlap 0.7
        return s


def pyramid(h, w, minsize, factor=0.709):
    """Same as detect_face's scale loop (float64)."""
    m = 12.0 / minsize
    minl = min(h, w) * m
    scale, scales = m, []
    while minl >= 12:
        scales.append(scale)
        scale *= factor
        minl *= factor
    return scales


def decode_like_rust(files, tmp):
    """Decodes `files` with the Rust `image` crate, as perception::Frame::open does."""
    subprocess.run(["cargo", "run", "--release", "-q", "-p", "perception", "--example", "decode",
                    "--", tmp, *files], cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    images = {}
    for path in files:
        stem = os.path.splitext(os.path.basename(path))[0]
        with open(os.path.join(tmp, stem + ".json")) as f:
            size = json.load(f)
        raw = np.fromfile(os.path.join(tmp, stem + ".rgb"), dtype=np.uint8)
        images[path] = Image.fromarray(raw.reshape(size["height"], size["width"], 3), "RGB")
    return images


def detect_goldens(files, sizes):
    out = []
    nets = {}
    with tempfile.TemporaryDirectory() as tmp:
        decoded = decode_like_rust(files, tmp)
    for path in files:
        img = decoded[path]
        arr = np.asarray(img, dtype=np.uint8)
        w, h = img.size
        for mfs in sizes:
            if mfs not in nets:
                nets[mfs] = make_mtcnn(mfs)
            tr = Trace()
            tr.install()
            try:
                boxes, probs, points = nets[mfs].detect(img, landmarks=True)
            finally:
                tr.uninstall()
            scales = pyramid(h, w, mfs)
            faces = []
            if boxes is not None:
                for b, p, l in zip(boxes, probs, points):
                    faces.append({"box": [r4(v) for v in b], "score": r4(p, 6),
                                  "landmarks": [[r4(x), r4(y)] for x, y in l]})
            stages = tr.summary()
            assert stages["final"] == len(faces), (path, stages, len(faces))
            rec = {
                "file": os.path.basename(path), "width": w, "height": h, "min_face_size": mfs,
                "pixel_sum": int(arr.astype(np.int64).sum()),
                "pixel_sum_rgb": [int(v) for v in arr.reshape(-1, 3).astype(np.int64).sum(0)],
                "scales": [float(s) for s in scales],
                "pyramid_hw": [[int(h * s + 1), int(w * s + 1)] for s in scales],
                "stages": stages,
                "faces": faces,
            }
            out.append(rec)
            print(f"{rec['file']:28s} {w}x{h} min{mfs}: {len(faces)} faces  stages {stages}")
    return out


def net_input(shape):
    n, c, h, w = np.meshgrid(*[np.arange(d, dtype=np.float64) for d in shape], indexing="ij")
    return torch.from_numpy((np.sin(0.37 * n + 1.3 * c + 0.11 * h + 0.07 * w) * 0.9).astype(np.float32))


def flat6(t):
    return [r4(v, 6) for v in t.detach().reshape(-1).tolist()]


def net_goldens(m):
    res = {"formula": NET_FORMULA, "decimals": 6, "layout": "row-major (NCHW / N x K), flattened"}
    with torch.no_grad():
        x = net_input((1, 3, 23, 31))
        reg, prob = m.pnet(x)
        res["pnet"] = {"input_shape": list(x.shape),
                       "reg": {"shape": list(reg.shape), "values": flat6(reg)},
                       "prob": {"shape": list(prob.shape), "values": flat6(prob)}}
        x = net_input((2, 3, 24, 24))
        reg, prob = m.rnet(x)
        res["rnet"] = {"input_shape": list(x.shape),
                       "reg": {"shape": list(reg.shape), "values": flat6(reg)},
                       "prob": {"shape": list(prob.shape), "values": flat6(prob)}}
        x = net_input((2, 3, 48, 48))
        reg, lmk, prob = m.onet(x)
        res["onet"] = {"input_shape": list(x.shape),
                       "reg": {"shape": list(reg.shape), "values": flat6(reg)},
                       "landmarks": {"shape": list(lmk.shape), "values": flat6(lmk)},
                       "prob": {"shape": list(prob.shape), "values": flat6(prob)}}
    return res


def resample_goldens():
    c, h, w = np.meshgrid(np.arange(3), np.arange(37), np.arange(53), indexing="ij")
    x = torch.from_numpy(((h * 7 + w * 13 + c * 29) % 256).astype(np.float32)[None])
    res = {"formula": RESAMPLE_FORMULA,
           "op": "facenet_pytorch imresample = torch.nn.functional.interpolate(x, size=(H,W), mode='area')"}
    for size in [(int(37 * 0.6 + 1), int(53 * 0.6 + 1)), (24, 24), (48, 48)]:
        y = dfm.imresample(x, size)
        key = f"{size[0]}x{size[1]}"
        flat = y.reshape(-1)
        rec = {"shape": list(y.shape), "sum": r4(float(flat.double().sum())),
               "first20": [r4(v) for v in flat[:20].tolist()]}
        if size == (24, 24):
            rec["values"] = [r4(v) for v in flat.tolist()]
        res[key] = rec
    return res


def check_weights(m):
    from safetensors.numpy import load_file
    st = load_file(SAFETENSORS)
    n = 0
    for net in ("pnet", "rnet", "onet"):
        for k, v in getattr(m, net).state_dict().items():
            assert np.array_equal(st[f"{net}.{k}"], v.numpy()), f"{net}.{k}"
            n += 1
    assert n == len(st), "extra tensors in mtcnn.safetensors"
    print(f"weights match {os.path.relpath(SAFETENSORS, REPO)} ({n} tensors)")


def main():
    ap = argparse.ArgumentParser(description="facenet-pytorch MTCNN goldens")
    ap.add_argument("--out", default=OUT)
    ap.add_argument("--images", default=os.path.join(SHARED, "faces-fullframe"))
    args = ap.parse_args()

    m = make_mtcnn(20)
    m.eval()
    check_weights(m)
    files = sorted(glob.glob(os.path.join(args.images, "*.jpg")))
    assert len(files) == 12, files
    doc = {
        "generator": "tools/mtcnn_reference.py",
        "command": "nice -n 10 tools/.venv-mtcnn/bin/python tools/mtcnn_reference.py",
        "versions": versions(),
        "weights": "assets/models/mtcnn.safetensors",
        "mtcnn_args": {"keep_all": True, "device": "cpu", "thresholds": [0.6, 0.7, 0.7],
                       "factor": 0.709, "post_process": False, "select_largest": True},
        "image_loading": "decoded by the Rust image crate (perception example `decode`), raw RGB24 -> PIL Image.fromarray; detect_face: np.uint8(img) HWC RGB -> "
                         "NCHW float32 (no scaling) -> imresample -> (x - 127.5) * 0.0078125",
        "face_order": "box area (x2-x1)*(y2-y1) descending (select_largest=True)",
        "landmark_order": "left eye, right eye, nose, mouth left, mouth right (image left/right)",
        "rounding": "boxes/landmarks 4 decimals, scores 6 decimals",
        "nets": net_goldens(m),
        "resample": resample_goldens(),
        "detect": detect_goldens(files, (20, 40)),
    }
    text = dumps(doc)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)
    print(f"wrote {os.path.relpath(args.out, REPO)} ({len(text)} bytes)")
    assert len(text) < 200_000


if __name__ == "__main__":
    main()
