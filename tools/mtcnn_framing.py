#!/usr/bin/env python3
"""How are FER2013's 48x48 faces framed? Measured with facenet-pytorch 2.6.0's MTCNN.

Reads shared/data/fer2013/fer2013.csv.gz (emotion,pixels,Usage), takes the first N (3000)
`Training` rows, upscales each 48x48 gray crop to 144x144 with PIL bilinear
(Image.resize((144,144), Image.BILINEAR)), converts to RGB (gray replicated), runs
MTCNN(keep_all=True, min_face_size=40, thresholds=[0.6,0.7,0.7], factor=0.709) .detect(...,
landmarks=True), keeps the images with exactly one face of score > 0.95, and reports the mean
and std of the five landmarks and the mean box in 48x48 crop coordinates (144x144 coordinates
divided by 3; MTCNN's coordinates are used as they come, i.e. the continuous-coordinate
scaling x48 = x144 / 3 that PIL's pixel-centre-aligned bilinear resize implies).

Landmark order: left eye, right eye, nose, mouth left, mouth right (as seen in the image).
Writes tools/fer2013_framing.json (small derived numbers only, no pixels) and prints them.

Usage (environment: see tools/mtcnn_convert.py):

    nice -n 10 tools/.venv-mtcnn/bin/python tools/mtcnn_framing.py [--rows 3000]
"""
import argparse
import csv
import gzip
import io
import os

import numpy as np
from PIL import Image

from mtcnn_common import REPO, SHARED, dumps, make_mtcnn, r4, setup_torch, versions

torch = setup_torch()

OUT = os.path.join(REPO, "tools", "fer2013_framing.json")
NAMES = ["left_eye", "right_eye", "nose", "mouth_left", "mouth_right"]


def main():
    ap = argparse.ArgumentParser(description="FER2013 framing via MTCNN")
    ap.add_argument("--csv", default=os.path.join(SHARED, "fer2013", "fer2013.csv.gz"))
    ap.add_argument("--rows", type=int, default=3000)
    ap.add_argument("--out", default=OUT)
    args = ap.parse_args()

    mtcnn = make_mtcnn(40)
    lms, boxes, scores = [], [], []
    n_rows = n_none = n_multi = n_low = 0
    with gzip.open(args.csv, "rt", newline="") as f:
        for row in csv.DictReader(f):
            if row["Usage"] != "Training":
                continue
            if n_rows == args.rows:
                break
            n_rows += 1
            px = np.array(row["pixels"].split(), dtype=np.uint8).reshape(48, 48)
            img = Image.fromarray(px, mode="L").resize((144, 144), Image.BILINEAR).convert("RGB")
            b, p, l = mtcnn.detect(img, landmarks=True)
            if b is None:
                n_none += 1
            elif len(b) > 1:
                n_multi += 1
            elif not p[0] > 0.95:
                n_low += 1
            else:
                boxes.append(b[0] / 3.0)
                lms.append(l[0] / 3.0)
                scores.append(float(p[0]))
            if n_rows % 500 == 0:
                print(f"  {n_rows} rows, {len(boxes)} kept", flush=True)

    lms = np.stack(lms).astype(np.float64)      # K x 5 x 2
    boxes = np.stack(boxes).astype(np.float64)  # K x 4
    wh = np.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], 1)
    eyes_c = lms[:, :2].mean(1)
    iod = np.linalg.norm(lms[:, 1] - lms[:, 0], axis=1)
    res = {
        "generator": "tools/mtcnn_framing.py",
        "command": "nice -n 10 tools/.venv-mtcnn/bin/python tools/mtcnn_framing.py --rows %d" % args.rows,
        "versions": versions(),
        "input": "fer2013.csv.gz, first %d 'Training' rows; 48x48 -> 144x144 PIL BILINEAR -> RGB" % args.rows,
        "detector": "facenet-pytorch MTCNN(min_face_size=40, thresholds=[0.6,0.7,0.7], factor=0.709, keep_all=True)",
        "selection": "exactly one face and score > 0.95",
        "coordinates": "48x48 crop pixels = 144x144 MTCNN coordinates / 3",
        "rows": n_rows,
        "used": len(boxes),
        "rejected": {"no_face": n_none, "several_faces": n_multi, "score_le_0.95": n_low},
        "landmark_names": NAMES,
        "landmarks_mean": [[r4(x), r4(y)] for x, y in lms.mean(0)],
        "landmarks_std": [[r4(x), r4(y)] for x, y in lms.std(0)],
        "box_mean": [r4(v) for v in boxes.mean(0)],
        "box_std": [r4(v) for v in boxes.std(0)],
        "box_wh_mean": [r4(v) for v in wh.mean(0)],
        "eye_centre_mean": [r4(v) for v in eyes_c.mean(0)],
        "inter_ocular_mean": r4(iod.mean()),
        "inter_ocular_std": r4(iod.std()),
        "score_mean": r4(np.mean(scores), 6),
    }
    text = dumps(res)
    with open(args.out, "w") as f:
        f.write(text)
    print(text, end="")
    print(f"wrote {os.path.relpath(args.out, REPO)}")


if __name__ == "__main__":
    main()
