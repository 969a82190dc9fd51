#!/usr/bin/env python3
"""Reference timings for ARCH-1 on this machine: PyTorch eager, TorchScript and
onnxruntime inference (batch 1 median latency, batch 64 throughput) and PyTorch
training (forward + backward + Adam, img/s at batch 64 and 256, with and without
on-the-fly affine augmentation). Prints `key: value` lines that
tools/bench_reference.sh turns into the ratio table of docs/PERFORMANCE.md.

Usage: tools/.venv-bench/bin/python tools/bench_reference.py --threads 2
       (add --ort-b1-only for just onnxruntime's batch-1 median: the
       interleaved rounds of tools/bench_reference.sh)
"""
import argparse
import math
import os
import statistics
import tempfile
import time


def build(torch):
    nn = torch.nn

    def cbr(ci, co, k=3, bias=False, stride=1, relu=True):
        layers = [nn.Conv2d(ci, co, k, stride=stride, padding=k // 2, bias=bias),
                  nn.BatchNorm2d(co, eps=1e-3, momentum=0.01)]
        if relu:
            layers.append(nn.ReLU())
        return nn.Sequential(*layers)

    def sep(ci, co, relu):
        layers = [nn.Conv2d(ci, ci, 3, padding=1, groups=ci, bias=False), nn.Conv2d(ci, co, 1, bias=False),
                  nn.BatchNorm2d(co, eps=1e-3, momentum=0.01)]
        if relu:
            layers.append(nn.ReLU())
        return nn.Sequential(*layers)

    class Arch1(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(cbr(1, 8), cbr(8, 8), cbr(8, 16), cbr(16, 16, relu=False),
                                      nn.MaxPool2d(2), nn.ReLU())
            self.main = nn.Sequential(sep(16, 32, True), sep(32, 32, False), nn.MaxPool2d(2), nn.ReLU())
            self.res = nn.Sequential(cbr(16, 16, 1, relu=False), cbr(16, 32, 1, stride=2, relu=False))
            self.tail = nn.Sequential(cbr(32, 64, bias=True), cbr(64, 64, bias=True, relu=False), nn.MaxPool2d(2),
                                      nn.ReLU(), cbr(64, 128, bias=True), cbr(128, 128, bias=True),
                                      nn.Conv2d(128, 7, 3, padding=1))

        def forward(self, x):
            t = self.stem(x)
            y = torch.relu(self.main(t) + self.res(t))
            return self.tail(y).mean(dim=(2, 3))

    return Arch1()


def median_ms(fn, warmup, runs):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def augment(torch, x):
    """Random rotation (20 deg), shift (10%), zoom (10%), flip: one affine grid."""
    n = x.shape[0]
    ang = (torch.rand(n) * 2 - 1) * math.radians(20)
    zoom = 1 + (torch.rand(n) * 2 - 1) * 0.1
    flip = torch.where(torch.rand(n) < 0.5, -1.0, 1.0)
    tx, ty = (torch.rand(n) * 2 - 1) * 0.2, (torch.rand(n) * 2 - 1) * 0.2
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = torch.cos(ang) * zoom * flip
    theta[:, 0, 1] = -torch.sin(ang) * zoom
    theta[:, 1, 0] = torch.sin(ang) * zoom * flip
    theta[:, 1, 1] = torch.cos(ang) * zoom
    theta[:, 0, 2], theta[:, 1, 2] = tx, ty
    grid = torch.nn.functional.affine_grid(theta, x.shape, align_corners=False)
    return torch.nn.functional.grid_sample(x, grid, padding_mode="border", align_corners=False)


def ort_session(torch, ort, model, x1, d, threads):
    """ARCH-1 exported to ONNX in folder `d`, in an onnxruntime CPU session."""
    path = os.path.join(d, "arch1.onnx")
    try:
        torch.onnx.export(model, x1, path, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "n"}}, dynamo=False)
    except TypeError:
        torch.onnx.export(model, x1, path, input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "n"}})
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def print_ort_b1(sess, x1, threads, runs):
    """onnxruntime's batch-1 median latency, as the `onnxruntime b1_ms` line."""
    a1 = x1.numpy()
    print(f"onnxruntime b1_ms t{threads}: {median_ms(lambda: sess.run(None, {'x': a1}), 30, runs):.3f}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--train-steps", type=int, default=6)
    ap.add_argument("--ort-b1-only", action="store_true",
                    help="only onnxruntime's batch-1 median (for interleaved rounds)")
    args = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import numpy as np
    import onnxruntime as ort
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build(torch).eval()
    x1 = torch.rand(1, 1, 48, 48)
    x64 = torch.rand(64, 1, 48, 48)
    t = args.threads
    if args.ort_b1_only:
        with tempfile.TemporaryDirectory() as d:
            print_ort_b1(ort_session(torch, ort, model, x1, d, t), x1, t, args.runs)
        return
    with torch.no_grad():
        print(f"torch_eager b1_ms t{t}: {median_ms(lambda: model(x1), 30, args.runs):.3f}")
        b64 = median_ms(lambda: model(x64), 2, 10)
        print(f"torch_eager b64_img_s t{t}: {64e3 / b64:.0f}")
        script = torch.jit.freeze(torch.jit.trace(model, x1))
        print(f"torchscript b1_ms t{t}: {median_ms(lambda: script(x1), 30, args.runs):.3f}")
    with tempfile.TemporaryDirectory() as d:
        sess = ort_session(torch, ort, model, x1, d, t)
        print_ort_b1(sess, x1, t, args.runs)
        a64 = x64.numpy()
        b64 = median_ms(lambda: sess.run(None, {"x": a64}), 2, 10)
        print(f"onnxruntime b64_img_s t{t}: {64e3 / b64:.0f}")

    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for batch in (64, 256):
        for aug in (False, True):
            xs = torch.rand(batch, 1, 48, 48)
            ys = torch.randint(0, 7, (batch,))

            def step():
                xb = augment(torch, xs) if aug else xs
                opt.zero_grad()
                loss = torch.nn.functional.cross_entropy(model(xb), ys)
                loss.backward()
                opt.step()

            ms = median_ms(step, 2, args.train_steps)
            print(f"torch_train b{batch}{'_aug' if aug else ''}_img_s t{t}: {batch * 1e3 / ms:.0f}")
    print(f"torch_version: {torch.__version__} onnxruntime_version: {ort.__version__} numpy: {np.__version__}")


if __name__ == "__main__":
    main()
