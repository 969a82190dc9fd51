#!/usr/bin/env python3
"""Convert facenet-pytorch 2.6.0's MTCNN weights (PNet, RNet, ONet) to one safetensors file.

Source: the facenet-pytorch 2.6.0 wheel from PyPI (MIT licence, (c) 2019 Timothy Esler),
files facenet_pytorch/data/{pnet,rnet,onet}.pt (old torch pickles of OrderedDict state_dicts
whose weight tensors have non-standard strides).

Output: assets/models/mtcnn.safetensors, float32, little-endian, every tensor contiguous in
PyTorch's layout (conv: [out, in, kh, kw]; linear: [out, in]; prelu: [channels]). Keys are the
facenet-pytorch state_dict keys prefixed by the net name, e.g. `pnet.conv1.weight`,
`rnet.dense4.weight`, `onet.dense6_3.bias`. The file is written by hand (not with
safetensors.save_file, whose `__metadata__` map order is not guaranteed) so re-running gives
the same bytes: header = compact JSON, `__metadata__` first, then the tensors in
pnet/rnet/onet state_dict order, padded with spaces to a multiple of 8 bytes.

Environment (torch is only needed to unpickle the .pt files; any recent CPU torch works):

    python3 -m venv tools/.venv-mtcnn
    tools/.venv-mtcnn/bin/pip install torch==2.14.1 torchvision==0.29.2 pillow numpy safetensors requests tqdm
    tools/.venv-mtcnn/bin/pip install --no-deps facenet-pytorch==2.6.0

Usage:

    nice -n 10 tools/.venv-mtcnn/bin/python tools/mtcnn_convert.py            # downloads the wheel with pip
    nice -n 10 tools/.venv-mtcnn/bin/python tools/mtcnn_convert.py --wheel facenet_pytorch-2.6.0-py3-none-any.whl

The wheel's sha256 is checked against the pinned value below. Prints the sha256 of the
wheel, of each .pt and of the output file.
"""
import argparse
import hashlib
import io
import json
import os
import struct
import subprocess
import sys
import tempfile
import zipfile

WHEEL_NAME = "facenet_pytorch-2.6.0-py3-none-any.whl"
WHEEL_URL = ("https://files.pythonhosted.org/packages/ed/2e/"
             "2d56386bc2f834cdc683743903852cf1428b4e5ee119f16cf808b589d3cd/" + WHEEL_NAME)
WHEEL_SHA256 = "ecb82b27beb226d106f2219efe8f829b01b87a8595badd01545679bdb9f19cca"
NETS = ("pnet", "rnet", "onet")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(REPO, "assets", "models", "mtcnn.safetensors")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fetch_wheel(dest: str) -> str:
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                    "--only-binary=:all:", "-d", dest, "facenet-pytorch==2.6.0"], check=True)
    return os.path.join(dest, WHEEL_NAME)


def load_state_dicts(wheel_bytes: bytes):
    import torch
    torch.set_num_threads(1)
    out, pt_sha = {}, {}
    with zipfile.ZipFile(io.BytesIO(wheel_bytes)) as z:
        for net in NETS:
            raw = z.read(f"facenet_pytorch/data/{net}.pt")
            pt_sha[net] = sha256(raw)
            sd = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
            out[net] = [(k, v.detach().to(torch.float32).contiguous().numpy()) for k, v in sd.items()]
    return out, pt_sha


def serialize(tensors, metadata) -> bytes:
    header = {"__metadata__": metadata}
    blobs, offset = [], 0
    for name, arr in tensors:
        data = arr.astype("<f4", copy=False).tobytes(order="C")
        header[name] = {"dtype": "F32", "shape": list(arr.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    h = json.dumps(header, separators=(",", ":"), ensure_ascii=True).encode("utf-8")
    h += b" " * ((8 - len(h) % 8) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(blobs)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wheel", help=f"path to {WHEEL_NAME} (default: pip download it)")
    ap.add_argument("--out", default=DEFAULT_OUT)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        wheel = args.wheel or fetch_wheel(tmp)
        with open(wheel, "rb") as f:
            wheel_bytes = f.read()
    wsha = sha256(wheel_bytes)
    print(f"wheel {WHEEL_NAME} sha256: {wsha}")
    if wsha != WHEEL_SHA256:
        sys.exit(f"wheel sha256 mismatch: expected {WHEEL_SHA256}")

    sds, pt_sha = load_state_dicts(wheel_bytes)
    tensors = []
    for net in NETS:
        print(f"{net}.pt sha256: {pt_sha[net]}")
        tensors += [(f"{net}.{k}", v) for k, v in sds[net]]

    metadata = {
        "format": "mtcnn/1",
        "source": "facenet-pytorch 2.6.0 (PyPI wheel)",
        "licence": "MIT",
        "wheel_sha256": wsha,
    }
    blob = serialize(tensors, metadata)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "wb") as f:
        f.write(blob)

    # Round-trip check with the reference reader when it is installed.
    try:
        from safetensors import safe_open
        import numpy as np
        with safe_open(args.out, framework="numpy") as f:
            assert f.metadata() == metadata
            assert list(f.keys()) == sorted(n for n, _ in tensors)
            for n, v in tensors:
                assert np.array_equal(f.get_tensor(n), v), n
    except ImportError:
        pass

    for n, v in tensors:
        print(f"  {n:24s} {list(v.shape)}")
    nparams = sum(v.size for _, v in tensors)
    print(f"{len(tensors)} tensors, {nparams} parameters")
    print(f"wrote {os.path.relpath(args.out, REPO)} ({len(blob)} bytes) sha256: {sha256(blob)}")
    if len(blob) > 3_000_000:
        sys.exit("output unexpectedly large")


if __name__ == "__main__":
    main()
