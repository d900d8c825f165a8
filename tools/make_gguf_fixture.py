#!/usr/bin/env python3
"""make_gguf_fixture.py - GGUF fixtures for tests/test_gguf.c, written by the `gguf`
package's GGUFWriter (the reference implementation of the format).

  python3 tools/make_gguf_fixture.py [outdir]     (default tests/data/gguf)
writes
  fixture.gguf        every metadata value type (scalars and arrays, strings with UTF-8
                      and an embedded NUL) and tensors of every type qnext reads, with
                      1- to 4-dimensional shapes;
  fixture_align.gguf  the same kind of file with general.alignment = 128;
  <name>.json         what the package's GGUFReader reads back from each file: every
                      key with its type and value, every tensor's type, shape (ggml
                      order), offsets, bytes (hex) and the sum of its values as
                      dequantized by gguf.quants.

  python3 tools/make_gguf_fixture.py --fuzz-seeds DIR
writes a few tiny GGUF files as the seed corpus of tests/fuzz/fuzz_gguf.c.

  python3 tools/make_gguf_fixture.py --check FILE.gguf
reads a file (e.g. one written by qnext's gguf_writer, see tests/test_gguf.c) with the
package's GGUFReader and prints its keys and tensors; with $QNEXT_GGML_LIB (a
libggml-base.so) it also reads it with ggml's C reader and compares; exits non-zero if
either cannot.
"""
import json
import os
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as QT
from gguf import GGUFValueType as VT
from gguf.constants import GGML_QUANT_SIZES
import gguf.quants

F16_FIELDS = {"Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "Q8_0": [0],
              "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208]}


def raw_blocks(rng, name, rows, cols):
    """Random blocks of a quantized type with finite f16 scales."""
    bs, ts = GGML_QUANT_SIZES[QT[name]]
    nb = rows * cols // bs
    raw = rng.integers(0, 256, (nb, ts), dtype=np.uint8)
    for off in F16_FIELDS.get(name, []):
        raw[:, off:off + 2] = (rng.standard_normal(nb) * 0.01).astype(np.float16).view(np.uint8).reshape(nb, 2)
    if name == "Q8_K":
        raw[:, 0:4] = (rng.standard_normal(nb) * 0.01).astype(np.float32).view(np.uint8).reshape(nb, 4)
    return raw.reshape(rows, cols // bs * ts)


def build(path, alignment=None, seed=0):
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(path, "qwen3next")  # writes general.architecture itself
    if alignment:
        w.add_custom_alignment(alignment)
    w.add_uint8("test.u8", 200)
    w.add_int8("test.i8", -100)
    w.add_uint16("test.u16", 60000)
    w.add_int16("test.i16", -30000)
    w.add_uint32("test.u32", 4000000000)
    w.add_int32("test.i32", -2000000000)
    w.add_float32("test.f32", 3.14159)
    w.add_bool("test.bool_true", True)
    w.add_bool("test.bool_false", False)
    w.add_string("test.str", "h\u00e9llo w\u00f6rld \u2713 \U0001F600")
    w.add_uint64("test.u64", 2**63 + 5)
    w.add_int64("test.i64", -(2**62) - 7)
    w.add_float64("test.f64", 2.718281828459045)
    w.add_key_value("arr.u8", [0, 1, 255], VT.ARRAY, sub_type=VT.UINT8)
    w.add_key_value("arr.i8", [-128, 0, 127], VT.ARRAY, sub_type=VT.INT8)
    w.add_key_value("arr.u16", [0, 65535], VT.ARRAY, sub_type=VT.UINT16)
    w.add_key_value("arr.i16", [-32768, 32767, 5], VT.ARRAY, sub_type=VT.INT16)
    w.add_key_value("arr.u32", [1, 2, 4294967295], VT.ARRAY, sub_type=VT.UINT32)
    w.add_key_value("arr.i32", [-1, 2, -2147483648], VT.ARRAY, sub_type=VT.INT32)
    w.add_key_value("arr.f32", [0.5, -1.25, 1e-30, 3.4e38], VT.ARRAY, sub_type=VT.FLOAT32)
    w.add_key_value("arr.bool", [True, False, True], VT.ARRAY, sub_type=VT.BOOL)
    w.add_key_value("arr.str", ["a", "", "\u65e5\u672c\u8a9e", "with\nnewline", "nul\x00inside"], VT.ARRAY,
                    sub_type=VT.STRING)
    w.add_key_value("arr.u64", [0, 2**64 - 1], VT.ARRAY, sub_type=VT.UINT64)
    w.add_key_value("arr.i64", [-(2**63), 2**63 - 1], VT.ARRAY, sub_type=VT.INT64)
    w.add_key_value("arr.f64", [1.0 / 3.0, -0.0, 1e300], VT.ARRAY, sub_type=VT.FLOAT64)
    # a vocabulary-sized string array (counts well above one byte)
    w.add_key_value("tokenizer.ggml.tokens", ["tok%d\u0120" % i for i in range(1000)], VT.ARRAY,
                    sub_type=VT.STRING)
    w.add_uint32("qwen3next.block_count", 48)

    # tensors: numpy shape is (..., rows, cols); GGUF stores it reversed (ne[0] = cols)
    w.add_tensor("t.f32_1d", rng.standard_normal(5).astype(np.float32))
    w.add_tensor("t.f32", rng.standard_normal((3, 8)).astype(np.float32))
    w.add_tensor("t.f32_3d", rng.standard_normal((2, 3, 4)).astype(np.float32))
    w.add_tensor("t.f32_4d", rng.standard_normal((2, 1, 3, 4)).astype(np.float32))
    w.add_tensor("t.f16", rng.standard_normal((2, 16)).astype(np.float16))
    bf = gguf.quants.quantize(rng.standard_normal((2, 16)).astype(np.float32), QT.BF16)
    w.add_tensor("t.bf16", bf, raw_dtype=QT.BF16)
    for name in ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"):
        q = gguf.quants.quantize(rng.standard_normal((2, 64)).astype(np.float32), QT[name])
        w.add_tensor("t.%s" % name.lower(), q, raw_dtype=QT[name])
    for name in ("Q4_K", "Q5_K", "Q6_K", "Q8_K"):
        w.add_tensor("t.%s" % name.lower(), raw_blocks(rng, name, 2, 256), raw_dtype=QT[name])
    # an expert-stacked 3-D quantized tensor, like blk.N.ffn_gate_exps
    w.add_tensor("blk.0.ffn_gate_exps.weight", raw_blocks(rng, "Q4_K", 4 * 3, 256).reshape(4, 3, -1),
                 raw_dtype=QT.Q4_K)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def value_json(field):
    """(type name, element type name or None, JSON value) of a GGUFReader field."""
    t = field.types[0]
    if t == VT.ARRAY:
        et = field.types[1] if len(field.types) > 1 else None
        vals = field.contents()
        if et == VT.STRING:
            vals = [bytes(field.parts[i]).decode("utf-8") for i in field.data]
        elif et in (VT.FLOAT32, VT.FLOAT64):
            vals = [float(v) for v in vals]
        elif et == VT.BOOL:
            vals = [bool(v) for v in vals]
        else:
            vals = [int(v) for v in vals]
        return "ARRAY", et.name if et is not None else None, vals
    if t == VT.STRING:
        return "STRING", None, bytes(field.parts[field.data[0]]).decode("utf-8")
    v = field.parts[field.data[0]][0]
    if t in (VT.FLOAT32, VT.FLOAT64):
        return t.name, None, float(v)
    if t == VT.BOOL:
        return t.name, None, bool(v)
    return t.name, None, int(v)


def dump(path):
    r = gguf.GGUFReader(path)
    kvs = []
    for name, field in r.fields.items():
        if name.startswith("GGUF."):
            continue  # header pseudo-fields of the reader
        t, et, v = value_json(field)
        kvs.append({"key": name, "type": t, "elem_type": et, "value": v})
    tensors = []
    data_start = min(int(t.data_offset) for t in r.tensors) if r.tensors else 0
    for t in r.tensors:
        raw = np.asarray(t.data).view(np.uint8).reshape(-1)
        if t.tensor_type == QT.Q8_K:  # no Q8_K class in the package: closed form d * q
            b = raw.reshape(-1, 292)
            deq = b[:, 0:4].copy().view(np.float32) * b[:, 4:260].view(np.int8).astype(np.float32)
        else:
            deq = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type)
        tensors.append({
            "name": t.name, "type": t.tensor_type.name, "type_id": int(t.tensor_type),
            "ne": [int(x) for x in t.shape], "file_offset": int(t.data_offset),
            "nbytes": int(t.n_bytes), "hex": raw.tobytes().hex(),
            "deq_sum": float(np.asarray(deq, dtype=np.float64).sum()),
        })
    al = r.fields.get("general.alignment")
    alignment = int(al.parts[al.data[0]][0]) if al else 32
    return {"version": int(r.fields["GGUF.version"].parts[-1][0]), "alignment": alignment,
            "data_offset": data_start, "file_size": os.path.getsize(path), "kv": kvs, "tensors": tensors}


def ggml_check(path, d):
    """Also read the file with ggml's own C reader (gguf_init_from_file in libggml-base,
    from $QNEXT_GGML_LIB) and compare counts, data offset, tensor names/types/offsets."""
    import ctypes
    lib = ctypes.CDLL(os.environ["QNEXT_GGML_LIB"])

    class Params(ctypes.Structure):
        _fields_ = [("no_alloc", ctypes.c_bool), ("ctx", ctypes.c_void_p)]
    lib.gguf_init_from_file.restype = ctypes.c_void_p
    lib.gguf_init_from_file.argtypes = [ctypes.c_char_p, Params]
    for fn, res in (("gguf_get_n_tensors", ctypes.c_int64), ("gguf_get_n_kv", ctypes.c_int64),
                    ("gguf_get_data_offset", ctypes.c_size_t), ("gguf_get_alignment", ctypes.c_size_t)):
        getattr(lib, fn).restype = res
        getattr(lib, fn).argtypes = [ctypes.c_void_p]
    lib.gguf_get_tensor_name.restype = ctypes.c_char_p
    lib.gguf_get_tensor_offset.restype = ctypes.c_size_t
    lib.gguf_get_tensor_type.restype = ctypes.c_int
    for fn in ("gguf_get_tensor_name", "gguf_get_tensor_offset", "gguf_get_tensor_type"):
        getattr(lib, fn).argtypes = [ctypes.c_void_p, ctypes.c_int64]
    lib.gguf_free.argtypes = [ctypes.c_void_p]
    ctx = lib.gguf_init_from_file(path.encode(), Params(True, None))
    if not ctx:
        sys.exit("ggml's gguf_init_from_file rejected %s" % path)
    n_t, n_kv = lib.gguf_get_n_tensors(ctx), lib.gguf_get_n_kv(ctx)
    ok = n_t == len(d["tensors"]) and n_kv == len(d["kv"]) and lib.gguf_get_alignment(ctx) == d["alignment"]
    base = lib.gguf_get_data_offset(ctx)
    for i, t in enumerate(d["tensors"]):
        ok &= lib.gguf_get_tensor_name(ctx, i).decode() == t["name"]
        ok &= lib.gguf_get_tensor_type(ctx, i) == t["type_id"]
        ok &= base + lib.gguf_get_tensor_offset(ctx, i) == t["file_offset"]
    lib.gguf_free(ctx)
    print("ggml gguf_init_from_file: %d tensors, %d keys, data offset %d: %s" % (n_t, n_kv, base,
          "consistent with the gguf package" if ok else "MISMATCH"))
    if not ok:
        sys.exit(1)


def check(path):
    d = dump(path)
    if os.environ.get("QNEXT_GGML_LIB"):
        ggml_check(path, d)
    print("version %d, alignment %d, %d keys, %d tensors" % (d["version"], d["alignment"], len(d["kv"]),
                                                               len(d["tensors"])))
    for kv in d["kv"]:
        v = kv["value"]
        s = repr(v if not isinstance(v, list) or len(v) <= 6 else v[:6] + ["..."])
        print("  %-32s %-8s %s" % (kv["key"], kv["type"] + ("[%s]" % kv["elem_type"] if kv["elem_type"] else ""), s))
    for t in d["tensors"]:
        print("  %-32s %-5s ne=%s offset=%d nbytes=%d sum=%.6g" % (t["name"], t["type"], t["ne"], t["file_offset"],
                                                                   t["nbytes"], t["deq_sum"]))


def fuzz_seeds(outdir):
    os.makedirs(outdir, exist_ok=True)
    rng = np.random.default_rng(7)
    specs = [
        ("scalars", None, ["F32"]),
        ("legacy", None, ["Q4_0", "Q8_0", "F16"]),
        ("kquants", 64, ["Q4_K", "Q6_K"]),
        ("more", None, ["Q5_K", "BF16", "Q4_1", "Q5_0", "Q5_1"]),
    ]
    for name, align, types in specs:
        path = os.path.join(outdir, name + ".gguf")
        w = gguf.GGUFWriter(path, "qwen3next")
        if align:
            w.add_custom_alignment(align)
        w.add_uint32("qwen3next.block_count", 2)
        w.add_float32("qwen3next.rope.freq_base", 10000.0)
        w.add_bool("b", True)
        w.add_int64("i", -3)
        w.add_key_value("a", ["x", "yz"], VT.ARRAY, sub_type=VT.STRING)
        w.add_key_value("n", [1, 2], VT.ARRAY, sub_type=VT.INT16)
        for k, t in enumerate(types):
            bs, ts = GGML_QUANT_SIZES[QT[t]]
            cols = bs if bs > 1 else 4
            if t == "F32":
                w.add_tensor("t%d" % k, rng.standard_normal((1, cols)).astype(np.float32))
            elif t == "F16":
                w.add_tensor("t%d" % k, rng.standard_normal((1, cols)).astype(np.float16))
            else:
                w.add_tensor("t%d" % k, raw_blocks(rng, t, 1, cols) if t not in ("BF16",) else
                             rng.integers(0, 255, (1, 8), dtype=np.uint8), raw_dtype=QT[t])
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        print(path, os.path.getsize(path))


def main():
    if len(sys.argv) > 2 and sys.argv[1] == "--fuzz-seeds":
        fuzz_seeds(sys.argv[2])
        return
    if len(sys.argv) > 2 and sys.argv[1] == "--check":
        check(sys.argv[2])
        return
    outdir = sys.argv[1] if len(sys.argv) > 1 else "tests/data/gguf"
    os.makedirs(outdir, exist_ok=True)
    for name, align, seed in (("fixture", None, 1), ("fixture_align", 128, 2)):
        path = os.path.join(outdir, name + ".gguf")
        build(path, align, seed)
        with open(os.path.join(outdir, name + ".json"), "w", encoding="utf-8") as f:
            json.dump(dump(path), f, ensure_ascii=False, indent=1)
        print(path, os.path.getsize(path), "bytes")


if __name__ == "__main__":
    main()
