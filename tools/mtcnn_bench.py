#!/usr/bin/env python3
"""Time facenet-pytorch 2.6.0 MTCNN detection on one 640x480 RGB frame, 1 thread.

The frame is Tom_Cruise_avp_2014_4.jpg (565x800, shared/data/faces-fullframe) letterboxed into
640x480. Recipe (integer arithmetic only, so the Rust side can rebuild it bit for bit):

  src      = PIL Image.open(path).convert('RGB')              565 x 800 (w x h)
  scale    = min(640/565, 480/800) -> new_w = (565*480 + 400) // 800 = 339, new_h = 480
  resize   = nearest neighbour, no PIL: dst[y][x] = src[((2*y+1)*800) // (2*480)][((2*x+1)*565) // (2*339)]
             (output pixel centre mapped to the source pixel containing it)
  canvas   = 640x480 filled with (127,127,127); the resized image pasted at x0 = (640-339)//2 = 150, y0 = 0

The script checks the frame against the sha256 / sums recorded in tools/mtcnn_bench_frame.json
(written on first run or with --write) and records the detections on it there, so Rust can
compare both the frame and the output. Timing: torch.set_num_threads(1), MTCNN(keep_all=True,
device='cpu', thresholds=[0.6,0.7,0.7], factor=0.709, post_process=False, min_face_size=20),
.detect(frame_pil, landmarks=True), 3 warm-ups then the median of 30 runs.

Usage (environment: see tools/mtcnn_convert.py):

    nice -n 10 tools/.venv-mtcnn/bin/python tools/mtcnn_bench.py [--write] [--min-face-size 20]

Prints `facenet-pytorch mtcnn 640x480 median_ms: X`.
"""
import argparse
import hashlib
import json
import os
import statistics
import time

import numpy as np
from PIL import Image

from mtcnn_common import REPO, SHARED, dumps, make_mtcnn, r4, setup_torch, versions

torch = setup_torch()

FRAME_JSON = os.path.join(REPO, "tools", "mtcnn_bench_frame.json")
W, H, GRAY = 640, 480, 127


def letterbox(src: np.ndarray):
    sh, sw = src.shape[:2]
    if sw * H > W * sh:  # width-limited
        nw, nh = W, (sh * W + sw // 2) // sw
    else:  # height-limited
        nw, nh = (sw * H + sh // 2) // sh, H
    ys = ((2 * np.arange(nh) + 1) * sh) // (2 * nh)
    xs = ((2 * np.arange(nw) + 1) * sw) // (2 * nw)
    resized = src[ys][:, xs]
    x0, y0 = (W - nw) // 2, (H - nh) // 2
    canvas = np.full((H, W, 3), GRAY, dtype=np.uint8)
    canvas[y0:y0 + nh, x0:x0 + nw] = resized
    return canvas, {"resized_wh": [nw, nh], "offset_xy": [x0, y0]}


def main():
    ap = argparse.ArgumentParser(description="facenet-pytorch MTCNN 640x480 benchmark")
    ap.add_argument("--image", default=os.path.join(SHARED, "faces-fullframe", "Tom_Cruise_avp_2014_4.jpg"))
    ap.add_argument("--min-face-size", type=int, default=20)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--write", action="store_true", help="(re)write tools/mtcnn_bench_frame.json")
    args = ap.parse_args()

    src = np.asarray(Image.open(args.image).convert("RGB"))
    frame, geo = letterbox(src)
    raw_sha = hashlib.sha256(frame.tobytes()).hexdigest()
    img = Image.fromarray(frame, "RGB")

    mtcnn = make_mtcnn(args.min_face_size)
    with torch.no_grad():
        boxes, probs, points = mtcnn.detect(img, landmarks=True)
    faces = [] if boxes is None else [
        {"box": [r4(v) for v in b], "score": r4(p, 6), "landmarks": [[r4(x), r4(y)] for x, y in l]}
        for b, p, l in zip(boxes, probs, points)]

    rec = {
        "generator": "tools/mtcnn_bench.py",
        "source": os.path.basename(args.image),
        "source_wh": [int(src.shape[1]), int(src.shape[0])],
        "frame_wh": [W, H],
        "pad_rgb": [GRAY, GRAY, GRAY],
        "resize": "nearest, integer: sy = ((2*y+1)*src_h) // (2*new_h), sx = ((2*x+1)*src_w) // (2*new_w)",
        "new_size_rule": "src_w*480 > 640*src_h ? (640, (src_h*640 + src_w//2) // src_w) : ((src_w*480 + src_h//2) // src_h, 480)",
        "offset_rule": "x0 = (640 - new_w) // 2, y0 = (480 - new_h) // 2",
        **geo,
        "frame_sha256_rgb24": raw_sha,
        "frame_sum_rgb": [int(v) for v in frame.reshape(-1, 3).astype(np.int64).sum(0)],
        "decode": "PIL Image.open(...).convert('RGB')",
        "min_face_size": args.min_face_size,
        "faces": faces,
        "versions": versions(),
    }
    if args.write or not os.path.exists(FRAME_JSON):
        with open(FRAME_JSON, "w") as f:
            f.write(dumps(rec))
        print(f"wrote {os.path.relpath(FRAME_JSON, REPO)}")
    else:
        with open(FRAME_JSON) as f:
            ref = json.load(f)
        if ref["frame_sha256_rgb24"] != raw_sha:
            print("WARNING: frame differs from tools/mtcnn_bench_frame.json (JPEG decoder?)")
    print(f"frame {W}x{H}: resized {geo['resized_wh']} at {geo['offset_xy']}, sha256(rgb24) {raw_sha}")
    print(f"faces: {json.dumps(faces)}")

    times = []
    with torch.no_grad():
        for i in range(args.warmup + args.runs):
            t0 = time.perf_counter()
            mtcnn.detect(img, landmarks=True)
            dt = (time.perf_counter() - t0) * 1e3
            if i >= args.warmup:
                times.append(dt)
    print(f"threads: {torch.get_num_threads()}, min_face_size: {args.min_face_size}, runs: {args.runs}, "
          f"min_ms: {min(times):.2f}, mean_ms: {statistics.mean(times):.2f}")
    print(f"facenet-pytorch mtcnn 640x480 median_ms: {statistics.median(times):.2f}")


if __name__ == "__main__":
    main()
