#!/usr/bin/env python3
"""Convert YuNet's published weights (libfacedetection's `src/facedetectcnn-data.cpp`) to safetensors.

Source: https://github.com/ShiqiYu/libfacedetection (3-clause BSD licence, (c) 2018-2023 Shiqi Yu),
file `src/facedetectcnn-data.cpp`: the 53 convolutions of YuNet (Wu, Peng, Yu, "YuNet: A Tiny
Millisecond-level Face Detector", Machine Intelligence Research 2023) as C float arrays, with
BatchNorm already folded into each convolution's bias, plus the table `param_pConvInfo` that says
for each array whether it is a 1x1 point-wise or a 3x3 depth-wise convolution.

Output: assets/models/yunet.safetensors, float32, little-endian. Each C array `a__b_c_weight`
becomes the tensor `a.b.c.weight` (double underscores and single underscores both become dots
between the C name's parts, e.g. `backbone__model1_dp1_pw_weight` -> `backbone.model1.dp1.pw.weight`),
in libfacedetection's memory layout, which the Rust engine reads as it is:

- point-wise: `[out, in]` (the first layer's `in` is 32: the 27 values of a 3x3 patch of a
  3-channel BGR image, index `(ky * 3 + kx) * 3 + c`, then 5 zeros);
- depth-wise: `[9, channels]` (kernel position `ky * 3 + kx` first, as `Filters::operator=` copies it);
- bias: `[out]`.

Only Python's standard library is needed. The header is compact JSON with `__metadata__` first and
the tensors in the C file's order, padded to a multiple of 8 bytes, so re-running gives the same bytes.

Usage (the source file from a clone of libfacedetection, or its raw URL saved to disk):

    python3 tools/yunet_convert.py --source libfacedetection/src/facedetectcnn-data.cpp \
        --commit acf7b25 --out assets/models/yunet.safetensors

Prints the sha256 of the source and of the output.
"""
import argparse
import hashlib
import json
import re
import struct
import sys

ARRAY = re.compile(r"float\s+(\w+)\s*\[([0-9*]+)\]\s*=\s*\{([^}]*)\};")
INFO = re.compile(r"\{\s*(\d+),\s*(\d+),\s*(true|false),\s*(true|false),\s*(true|false),\s*(\w+),\s*(\w+)\s*\}")


def tensor_name(c_name):
    return c_name.replace("__", ".").replace("_", ".")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", required=True, help="path to facedetectcnn-data.cpp")
    ap.add_argument("--commit", required=True, help="libfacedetection commit the file is from")
    ap.add_argument("--out", default="assets/models/yunet.safetensors")
    args = ap.parse_args()

    text = open(args.source, encoding="utf-8").read()
    arrays = {}
    order = []
    for name, dims, body in ARRAY.findall(text):
        count = 1
        for d in dims.split("*"):
            count *= int(d)
        values = [float(v.strip().rstrip("f")) for v in body.split(",") if v.strip()]
        if len(values) != count:
            sys.exit(f"{name}: {len(values)} values, declared {count}")
        arrays[name] = values
        order.append(name)
    infos = INFO.findall(text)
    if len(infos) != 53:
        sys.exit(f"expected 53 convolutions in param_pConvInfo, found {len(infos)}")

    shapes = {}
    for cin, cout, dw, pw, _bn, w, b in infos:
        cin, cout = int(cin), int(cout)
        if dw == "true" and pw == "false":
            shapes[w] = [9, cout]
        elif pw == "true" and dw == "false":
            shapes[w] = [cout, cin]
        else:
            sys.exit(f"{w}: neither point-wise nor depth-wise")
        shapes[b] = [cout]
    for name in order:
        if name not in shapes:
            sys.exit(f"{name} is not used by param_pConvInfo")
        n = 1
        for d in shapes[name]:
            n *= d
        if n != len(arrays[name]):
            sys.exit(f"{name}: {len(arrays[name])} values for shape {shapes[name]}")

    header = {
        "__metadata__": {
            "format": "yunet-libfacedetection",
            "source": "https://github.com/ShiqiYu/libfacedetection src/facedetectcnn-data.cpp",
            "commit": args.commit,
            "licence": "BSD-3-Clause",
        }
    }
    blobs = []
    offset = 0
    for name in order:
        data = struct.pack(f"<{len(arrays[name])}f", *arrays[name])
        header[tensor_name(name)] = {
            "dtype": "F32",
            "shape": shapes[name],
            "data_offsets": [offset, offset + len(data)],
        }
        blobs.append(data)
        offset += len(data)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    out = struct.pack("<Q", len(head)) + head + b"".join(blobs)
    with open(args.out, "wb") as f:
        f.write(out)
    params = sum(len(v) for v in arrays.values())
    print(f"{len(order)} tensors, {params} values (padding of the first layer included)")
    print("source sha256", hashlib.sha256(text.encode()).hexdigest())
    print("output sha256", hashlib.sha256(out).hexdigest(), f"({len(out)} bytes) -> {args.out}")


if __name__ == "__main__":
    main()
