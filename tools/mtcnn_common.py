"""Shared helpers for the tools/mtcnn_*.py scripts (facenet-pytorch 2.6.0 MTCNN reference).

Not a script. See tools/mtcnn_convert.py for the environment (tools/.venv-mtcnn).
"""
import json
import math
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get("SHARED_DATA", os.path.join(os.path.dirname(REPO), "shared", "data"))


def setup_torch():
    import torch
    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    return torch


def make_mtcnn(min_face_size=20, **kw):
    from facenet_pytorch import MTCNN
    return MTCNN(keep_all=True, device="cpu", thresholds=[0.6, 0.7, 0.7], factor=0.709,
                 post_process=False, min_face_size=min_face_size, **kw)


def r4(v, nd=4):
    v = round(float(v), nd)
    return 0.0 if v == 0 else v  # no "-0.0"


def versions():
    import numpy
    import PIL
    import torch
    import torchvision
    import facenet_pytorch  # noqa: F401
    from importlib.metadata import version
    return {"facenet_pytorch": version("facenet-pytorch"), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "pillow": PIL.__version__, "numpy": numpy.__version__}


def dumps(obj, indent=1):
    """JSON with nested dicts indented but lists of scalars (and lists of such lists) on one line."""
    def flat(o):
        return isinstance(o, list) and all(
            not isinstance(x, (dict, list)) or (isinstance(x, list) and flat(x)) for x in o)

    def enc(o, lvl):
        pad, pad1 = " " * (indent * lvl), " " * (indent * (lvl + 1))
        if isinstance(o, dict):
            if not o:
                return "{}"
            items = [f"{pad1}{json.dumps(k)}: {enc(v, lvl + 1)}" for k, v in o.items()]
            return "{\n" + ",\n".join(items) + "\n" + pad + "}"
        if isinstance(o, list):
            if flat(o):
                return json.dumps(o, separators=(",", ":"), allow_nan=False)
            return "[\n" + ",\n".join(pad1 + enc(v, lvl + 1) for v in o) + "\n" + pad + "]"
        if isinstance(o, float) and not math.isfinite(o):
            raise ValueError("non-finite float")
        return json.dumps(o)
    return enc(obj, 0) + "\n"
