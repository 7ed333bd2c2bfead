#!/usr/bin/python3
"""Checks an ONNX file written by fl-export, independently of fl's code.

usage: onnx_check.py MODEL.onnx DATA.csv PREDICTIONS.csv [NPY_DIR]

1. onnx.checker (Debian's python3-onnx) accepts the model, with full shape inference.
2. The graph is run by the small NumPy evaluator below (its own reading of each ONNX
   operator's definition) on DATA.csv's feature columns, and its outputs must equal the
   prediction columns fl-predict wrote to PREDICTIONS.csv within 1e-5.
3. With NPY_DIR, every .npy file there holds exactly the initializer of the same name.

Prints 'onnx_check: ok ...' and exits 0, or says what differs and exits 1.
"""
import csv
import os
import sys

import numpy as np
import onnx
from onnx import numpy_helper

TOL = 1e-5


def conv2d(x, w, b, strides, pads):
    n, c, h, wd = x.shape
    k, _, fh, fw = w.shape
    x = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    oh = (x.shape[2] - fh) // strides[0] + 1
    ow = (x.shape[3] - fw) // strides[1] + 1
    y = np.zeros((n, k, oh, ow), dtype=np.float64)
    for i in range(oh):
        for j in range(ow):
            patch = x[:, :, i * strides[0]:i * strides[0] + fh, j * strides[1]:j * strides[1] + fw]
            y[:, :, i, j] = np.tensordot(patch, w, axes=([1, 2, 3], [1, 2, 3]))
    return y + b.reshape(1, -1, 1, 1)


def pool(x, kernel, strides, fn):
    n, c, h, w = x.shape
    oh = (h - kernel[0]) // strides[0] + 1
    ow = (w - kernel[1]) // strides[1] + 1
    y = np.zeros((n, c, oh, ow), dtype=np.float64)
    for i in range(oh):
        for j in range(ow):
            y[:, :, i, j] = fn(x[:, :, i * strides[0]:i * strides[0] + kernel[0],
                                 j * strides[1]:j * strides[1] + kernel[1]], axis=(2, 3))
    return y


def attrs(node):
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def run(model, x):
    env = {t.name: numpy_helper.to_array(t).astype(np.float64 if t.data_type == 1 else np.int64)
           for t in model.graph.initializer}
    env[model.graph.input[0].name] = x.astype(np.float64)
    for node in model.graph.node:
        a = attrs(node)
        i = [env[n] for n in node.input]
        op = node.op_type
        if op == "Gemm":
            assert a.get("transB") == 1 and a.get("transA", 0) == 0
            y = i[0] @ i[1].T + i[2]
        elif op == "Conv":
            y = conv2d(i[0], i[1], i[2], a.get("strides", [1, 1]), a.get("pads", [0, 0, 0, 0]))
        elif op == "MaxPool":
            y = pool(i[0], a["kernel_shape"], a["strides"], np.max)
        elif op == "AveragePool":
            y = pool(i[0], a["kernel_shape"], a["strides"], np.mean)
        elif op == "GlobalAveragePool":
            y = i[0].mean(axis=(2, 3), keepdims=True)
        elif op == "BatchNormalization":
            x0, g, bta, mu, var = i
            shape = (1, -1) + (1,) * (x0.ndim - 2)
            y = (x0 - mu.reshape(shape)) / np.sqrt(var.reshape(shape) + a.get("epsilon", 1e-5)) \
                * g.reshape(shape) + bta.reshape(shape)
        elif op == "Relu":
            y = np.maximum(i[0], 0)
        elif op == "Sigmoid":
            y = 1 / (1 + np.exp(-i[0]))
        elif op == "Tanh":
            y = np.tanh(i[0])
        elif op == "Softmax":
            assert a.get("axis", -1) in (1, -1)
            e = np.exp(i[0] - i[0].max(axis=1, keepdims=True))
            y = e / e.sum(axis=1, keepdims=True)
        elif op == "Flatten":
            y = i[0].reshape(i[0].shape[0], -1)
        elif op == "Reshape":
            y = i[0].reshape(tuple(int(d) for d in i[1]))
        elif op == "Sub":
            y = i[0] - i[1]
        elif op == "Div":
            y = i[0] / i[1]
        elif op == "Identity":
            y = i[0]
        else:
            raise SystemExit(f"onnx_check: operator {op} is not known to this evaluator")
        env[node.output[0]] = y
    return env[model.graph.output[0].name]


def main():
    if len(sys.argv) not in (4, 5):
        raise SystemExit(__doc__)
    path, data_path, pred_path = sys.argv[1:4]
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    opset = max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset < 13:
        raise SystemExit(f"onnx_check: opset {opset} < 13")
    width = model.graph.input[0].type.tensor_type.shape.dim[1].dim_value
    with open(data_path) as f:
        rows = [r for r in csv.reader(f)][1:]
    x = np.array([[float(v) for v in r[:width]] for r in rows if r], dtype=np.float32)
    with open(pred_path) as f:
        pr = list(csv.reader(f))
    head = pr[0]
    cols = [k for k, name in enumerate(head) if name not in ("predicted", "label")]
    want = np.array([[float(r[k]) for k in cols] for r in pr[1:] if r], dtype=np.float64)
    got = run(model, x)
    if got.shape != want.shape:
        raise SystemExit(f"onnx_check: output shape {got.shape}, fl-predict wrote {want.shape}")
    diff = float(np.max(np.abs(got - want))) if got.size else 0.0
    if not diff <= TOL:
        raise SystemExit(f"onnx_check: outputs differ from fl-predict's by {diff:.3g} > {TOL}")
    checked = 0
    if len(sys.argv) == 5:
        inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        for name in sorted(os.listdir(sys.argv[4])):
            if not name.endswith(".npy"):
                continue
            arr = np.load(os.path.join(sys.argv[4], name))
            ref = inits.get(name[:-4])
            if ref is None or arr.dtype != np.float32 or arr.shape != ref.shape or \
                    not np.array_equal(arr, ref):
                raise SystemExit(f"onnx_check: {name} does not hold the initializer {name[:-4]}")
            checked += 1
    print(f"onnx_check: ok: checker accepts opset {opset}, {len(model.graph.node)} nodes, "
          f"{len(want)} rows match fl-predict within {diff:.2g}, {checked} .npy files match")


if __name__ == "__main__":
    main()
