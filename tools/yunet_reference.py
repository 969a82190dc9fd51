#!/usr/bin/env python3
"""Golden detections of YuNet from libfacedetection's own C++ code, for perception/tests/yunet.rs.

Builds tools/yunet_reference.cpp against libfacedetection's src/ (BSD-3; the commit the weights
were converted from), runs it on two images and writes perception/tests/golden/yunet.json:

- `astronaut`: assets/images/astronaut.png as it is (512x512, one face);
- `collage`: a 600x450 gray canvas (value 90; sizes not multiples of 32, so the padding is
  exercised) with the astronaut pasted three times, scaled by nearest neighbour to 256, 128 and
  64 px squares at (10, 20), (330, 40) and (480, 300): source pixel (x * 512 // side, y * 512 // side).
  The Rust test rebuilds the same canvas with the same integer formula.

Usage: python3 tools/yunet_reference.py --src libfacedetection/src
(needs g++ and a `convert` that turns a PNG into a PPM; only the standard library otherwise).
"""
import argparse
import json
import os
import subprocess
import tempfile

PLACES = [(256, 10, 20), (128, 330, 40), (64, 480, 300)]
CANVAS = (600, 450, 90)


def read_ppm(data):
    parts = data.split(maxsplit=4)
    assert parts[0] == b"P6" and parts[3] == b"255"
    w, h = int(parts[1]), int(parts[2])
    return w, h, parts[4][: w * h * 3]


def ppm(w, h, pix):
    return b"P6 %d %d 255\n" % (w, h) + bytes(pix)


def collage(w0, h0, src):
    cw, ch, gray = CANVAS
    out = bytearray([gray] * (cw * ch * 3))
    for side, ox, oy in PLACES:
        for y in range(side):
            sy = y * h0 // side
            for x in range(side):
                sx = x * w0 // side
                s = (sy * w0 + sx) * 3
                d = ((oy + y) * cw + ox + x) * 3
                out[d : d + 3] = src[s : s + 3]
    return cw, ch, out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", required=True, help="libfacedetection's src/ directory")
    ap.add_argument("--out", default="perception/tests/golden/yunet.json")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp()
    with open(os.path.join(tmp, "facedetection_export.h"), "w") as f:
        f.write("#define FACEDETECTION_EXPORT\n")
    exe = os.path.join(tmp, "yunet_reference")
    subprocess.run(
        ["g++", "-O2", "-std=c++11", "-I", args.src, "-I", tmp, "tools/yunet_reference.cpp",
         os.path.join(args.src, "facedetectcnn.cpp"), os.path.join(args.src, "facedetectcnn-data.cpp"),
         "-o", exe],
        check=True,
    )
    png = subprocess.run(["convert", "assets/images/astronaut.png", "ppm:-"], check=True, capture_output=True).stdout
    w0, h0, src = read_ppm(png)
    images = {"astronaut": (w0, h0, src), "collage": collage(w0, h0, src)}
    golden = {
        "generator": "tools/yunet_reference.py (libfacedetection's C++ via tools/yunet_reference.cpp)",
        "score": "sqrt(sigmoid(cls) * sigmoid(obj)) >= 0.2, greedy NMS at IoU 0.45",
        "collage": {"canvas": list(CANVAS), "places": [list(p) for p in PLACES]},
        "images": {},
    }
    for name, (w, h, pix) in images.items():
        path = os.path.join(tmp, name + ".ppm")
        with open(path, "wb") as f:
            f.write(ppm(w, h, pix))
        out = subprocess.run([exe, path], check=True, capture_output=True, text=True).stdout
        result = json.loads(out)
        result["pixel_sum"] = sum(pix)
        golden["images"][name] = result
        print(name, len(result["faces"]), "faces")
    with open(args.out, "w") as f:
        json.dump(golden, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
