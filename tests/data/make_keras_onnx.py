"""Build ONNX fixtures exported from TensorFlow/Keras (not PyTorch).

These files exercise an ONNX reader on graphs produced by a non-PyTorch
exporter: NHWC inputs, Transpose nodes inserted by tf2onnx around NCHW ops,
TF "same" padding lowered to explicit (often asymmetric) ``pads``,
ZeroPadding2D as ``Pad`` nodes, BatchNorm as per-channel Mul+Add (or folded
into Conv), UpSampling2D (bilinear) as a Resize, tf2onnx-style node names, a dynamic batch dimension.

How it was run (outside the project's own environment, in a separate venv,
Python 3.11.7)::

    python3 -m venv /work/tfvenv
    /work/tfvenv/bin/pip install tensorflow-cpu keras tf2onnx onnx onnxruntime
    /work/tfvenv/bin/python tests/data/make_keras_onnx.py

Versions that worked (the newest on PyPI at the time, no pins needed):
    tensorflow-cpu 2.21.0, keras 3.15.1 (TensorFlow backend), tf2onnx 1.17.0,
    onnx 1.23.2, onnxruntime 1.31.1, numpy 2.4.6, protobuf 7.36.2.

Export path: Keras 3's own ``model.export(path, format="onnx",
opset_version=13, input_signature=...)``, which calls
``tf2onnx.convert.from_function`` (with Keras' numpy-2 patch for tf2onnx).
Batch dimension is left dynamic (``None``), as in a typical export.

All models use random weights (``weights=None``); nothing is downloaded.
Seeds are fixed with ``keras.utils.set_random_seed``; biases and BatchNorm
statistics are then set to seeded random values (see ``randomize_affine``).
Each export is checked against Keras with onnxruntime before stripping.
tf2onnx's graph structure is deterministic but its generated names are not,
so they are renumbered (``canonicalize_names``); re-running the script
reproduces the files byte for byte.

Why weights are stripped: ResNet50 is ~100 MB and MobileNetV2 ~14 MB of
float32 weights, too big to commit.  A receptive-field reader only needs the
graph structure, attributes and tensor shapes, so after export every
initializer larger than 1024 bytes is moved to external data
(``weights.bin``) with ``convert_model_to_external_data`` and that file is then
deleted.  The .onnx keeps all nodes, names, attributes, initializer
names/dims/dtypes and small constants (shape vectors, axes, pads) inline; the
big weights are only referenced.  Load such files with
``onnx.load(path, load_external_data=False)``.  ``keras_small_full.onnx`` is the
small model *with* its weights (saved before stripping) so a test can run it
in onnxruntime.
"""

import os
import re
import sys
import tempfile
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import onnx  # noqa: E402
from onnx import external_data_helper  # noqa: E402

# Keras' numpy-2 patch for tf2onnx probes `np.object`, which warns.
warnings.filterwarnings("ignore", message=".*np.object.*", category=FutureWarning)

OUT_DIR = os.path.dirname(os.path.abspath(__file__))
OPSET = 13
SEED = 0
SIZE_THRESHOLD = 1024


def build_small():
    """Small functional model covering the layers a reader must handle."""
    L = keras.layers
    inp = keras.Input((64, 64, 3), name="input")
    x = L.Conv2D(8, 3, strides=2, padding="same", activation="relu",
                 name="conv_s2")(inp)                                   # 32
    x = L.Conv2D(8, 5, padding="same", dilation_rate=2, activation="relu",
                 name="conv_dil2")(x)                                   # 32
    x = L.MaxPooling2D(3, strides=2, padding="same", name="maxpool_s2")(x)  # 16
    a = L.Conv2D(8, 3, padding="same", activation="relu", name="branch_a_conv1")(x)
    a = L.Conv2D(8, 3, padding="same", name="branch_a_conv2")(a)
    res = L.Add(name="residual_add")([x, a])                            # 16, 8ch
    b = L.Conv2D(8, 1, name="branch_b_conv1x1")(x)                      # 16, 8ch
    x = L.Concatenate(axis=-1, name="concat")([res, b])                 # 16, 16ch
    x = L.UpSampling2D(2, interpolation="bilinear", name="upsample")(x)  # 32
    x = L.Conv2DTranspose(4, 3, strides=2, padding="same",
                          name="deconv_s2")(x)                          # 64
    x = L.AveragePooling2D(2, name="avgpool")(x)                        # 32
    x = L.GlobalAveragePooling2D(name="gap")(x)
    out = L.Dense(10, name="logits")(x)
    return keras.Model(inp, out, name="keras_small")


def randomize_affine(model):
    """Give biases and BatchNorm statistics non-trivial random values.

    Keras initialises them to 0/1, which lets tf2onnx drop zero bias-adds and
    makes random-weight networks collapse to near-constant outputs (so the
    onnxruntime check would prove little).  Kernels keep Keras' seeded
    initialisers.
    """
    rng = np.random.default_rng(SEED)
    for w in model.weights:
        leaf = w.path.rsplit("/", 1)[-1]
        shape = tuple(w.shape)
        if leaf in ("bias", "beta", "moving_mean"):
            w.assign(rng.normal(0.0, 0.1, shape).astype(np.float32))
        elif leaf in ("gamma", "moving_variance"):
            w.assign(rng.uniform(0.5, 1.5, shape).astype(np.float32))
    return model


def build_models():
    keras.utils.set_random_seed(SEED)
    yield "keras_small", randomize_affine(build_small()), (64, 64, 3)
    keras.utils.set_random_seed(SEED)
    yield ("keras_resnet50",
           randomize_affine(keras.applications.ResNet50(
               weights=None, include_top=True, input_shape=(224, 224, 3))),
           (224, 224, 3))
    keras.utils.set_random_seed(SEED)
    yield ("keras_mobilenetv2",
           randomize_affine(keras.applications.MobileNetV2(
               weights=None, include_top=True, input_shape=(224, 224, 3))),
           (224, 224, 3))


def export(model, hwc, path):
    import tensorflow as tf

    # Explicit input name: the default (the KerasTensor's name, e.g.
    # "keras_tensor_13") comes from a global counter.
    sig = [tf.TensorSpec((None,) + hwc, tf.float32, name="input")]
    model.export(path, format="onnx", opset_version=OPSET,
                 input_signature=sig, verbose=False)


def check_numerics(model, model_proto, name, hwc):
    """Compare onnxruntime on the full-weight (renamed) export with Keras."""
    try:
        import onnxruntime as ort
    except ImportError:
        print("  onnxruntime not installed; skipping numeric check")
        return
    x = np.random.default_rng(SEED).standard_normal((2,) + hwc).astype(np.float32)
    ref = np.asarray(model(x, training=False))
    if np.ptp(ref) < 1e-6:
        raise SystemExit(f"degenerate (constant) reference output for {name}")
    sess = ort.InferenceSession(model_proto.SerializeToString(),
                                providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    err = float(np.max(np.abs(got - ref)))
    scale = float(np.max(np.abs(ref))) or 1.0
    print(f"  onnxruntime vs keras: max|diff|={err:.3g} (max|ref|={scale:.3g}, "
          f"ptp(ref)={np.ptp(ref):.3g})")
    if err > 1e-4 * float(np.ptp(ref)) + 1e-6:
        raise SystemExit(f"numeric mismatch for {name}")


_GEN = re.compile(r"^(.*?)((?:__\d+)+)(:\d+)?$")


def canonicalize_names(model_proto):
    """Make tf2onnx's generated names reproducible.

    The graph structure tf2onnx emits is deterministic, but its generated
    names are not: the ``__<counter>`` suffixes shift between runs and the
    constant de-duplication keeps an arbitrary one of several equal
    constants (``const_starts__45`` in one run, ``const_ends__34`` in the
    next).  So: every initializer whose name has a ``__<n>`` suffix (all
    tf2onnx-made constants; Keras weights have none) is renamed
    ``const__<k>`` in order of first use, and every other ``<base>__<n>``
    name (nodes, tensors, ``unk__<n>`` dim params) becomes ``<base>__<k>``,
    numbered in order of first appearance.  Keras-derived bases are kept.
    """
    g = model_proto.graph
    assert not any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                   for n in g.node for a in n.attribute), "subgraphs not handled"
    gen_inits = {i.name for i in g.initializer if _GEN.match(i.name)}
    mapping = {}
    counter = [0, 0]

    def rename(name):
        if not name:
            return name
        if name in gen_inits:
            if name not in mapping:
                mapping[name] = f"const__{counter[0]}"
                counter[0] += 1
            return mapping[name]
        m = _GEN.match(name)
        if not m:
            return name
        stem = name[: len(name) - len(m.group(3) or "")]
        if stem not in mapping:
            mapping[stem] = f"{m.group(1)}__{counter[1]}"
            counter[1] += 1
        return mapping[stem] + (m.group(3) or "")

    def rename_dims(vi):
        for d in vi.type.tensor_type.shape.dim:
            if d.dim_param:
                d.dim_param = rename(d.dim_param)

    for vi in g.input:
        vi.name = rename(vi.name)
        rename_dims(vi)
    for n in g.node:
        n.name = rename(n.name)
        n.input[:] = [rename(x) for x in n.input]
        n.output[:] = [rename(x) for x in n.output]
    for vi in list(g.output) + list(g.value_info):
        vi.name = rename(vi.name)
        rename_dims(vi)
    leftover = [i for i in g.initializer if i.name in gen_inits and i.name not in mapping]
    for i in g.initializer:
        i.name = rename(i.name)
    assert not leftover, "unused generated initializers"
    # Initializers in order of first use, so the file is byte-stable too.
    order = {}
    for n in g.node:
        for x in n.input:
            order.setdefault(x, len(order))
    inits = sorted(g.initializer, key=lambda i: order.get(i.name, len(order)))
    del g.initializer[:]
    g.initializer.extend(inits)
    names = [n.name for n in g.node]
    assert len(set(names)) == len(names), "node names collide"
    return model_proto


def strip_weights(model_proto, path):
    """Save with big initializers as (deleted) external data."""
    ext = os.path.join(os.path.dirname(path), "weights.bin")
    if os.path.exists(ext):
        os.remove(ext)
    external_data_helper.convert_model_to_external_data(
        model_proto, all_tensors_to_one_file=True, location="weights.bin",
        size_threshold=SIZE_THRESHOLD)
    onnx.save(model_proto, path)
    if os.path.exists(ext):
        os.remove(ext)


def verify_stripped(path, dims):
    """Reload without external data; every initializer keeps its dims."""
    m = onnx.load(path, load_external_data=False)
    got = {i.name: list(i.dims) for i in m.graph.initializer}
    assert got == dims, path
    n_ext = 0
    for init in m.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            n_ext += 1
            assert not init.raw_data, init.name
    size = os.path.getsize(path)
    assert size < 1_000_000, (path, size)
    print(f"  {os.path.basename(path)}: {size} bytes, {len(m.graph.node)} nodes, "
          f"{len(m.graph.initializer)} initializers ({n_ext} external, stripped)")


def main():
    import tensorflow as tf

    print(f"tensorflow {tf.__version__}, keras {keras.__version__} "
          f"({keras.backend.backend()}), onnx {onnx.__version__}", file=sys.stderr)
    for name, model, hwc in build_models():
        print(name)
        with tempfile.TemporaryDirectory() as tmp:
            full = os.path.join(tmp, name + ".onnx")
            export(model, hwc, full)
            proto = canonicalize_names(onnx.load(full))
        check_numerics(model, proto, name, hwc)
        onnx.checker.check_model(proto, full_check=True)
        dims = {i.name: list(i.dims) for i in proto.graph.initializer}
        opsets = {o.domain: o.version for o in proto.opset_import}
        assert opsets.get("", 0) >= 13, opsets
        if name == "keras_small":
            full_out = os.path.join(OUT_DIR, "keras_small_full.onnx")
            onnx.save(proto, full_out)
            print(f"  keras_small_full.onnx: {os.path.getsize(full_out)} bytes (full weights)")
        out = os.path.join(OUT_DIR, name + ".onnx")
        strip_weights(proto, out)
        verify_stripped(out, dims)


if __name__ == "__main__":
    main()
