#!/usr/bin/env python3
"""make_quant_refs.py - reference data for tests/test_quant.c, from ggml's own code.

For every block format qnext supports this writes tests/data/quant/<TYPE>.bin holding
  (a) random raw blocks (random bytes; the f16/f32 scale fields replaced by random
      finite values, including zero and subnormal scales) and their dequantization by
      the `gguf` Python package (gguf.quants.dequantize), which the package's authors
      keep bit-identical to ggml's dequantize_row_*;
  (b) deterministic test rows of several distributions (normal, uniform, outliers,
      all-zero, tiny, huge, constant, positive-only, rounding ties) and their
      quantization by gguf.quants.quantize where the package has a quantizer
      (F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0);
  (c) when ggml's library is available ($QNEXT_GGML_LIB, or the one bundled with the
      llama-cpp-python package), the same rows quantized by ggml's exported
      quantize_row_*_ref functions, and blocks dequantized by ggml's dequantize_row_*.
      This is how the K-quant quantizers (which the gguf package lacks) get a byte-exact
      reference. IQ4_NL and IQ4_XS are quantized by quantize_iq4_nl / quantize_iq4_xs, the
      functions llama-quantize calls (rows of 256, no importance matrix).

File layout (little-endian):
  magic "QNQREF1\\0", u32 type, u32 n_deq_blocks, u32 n_q_elems, u32 flags
  raw blocks           n_deq_blocks * type_size bytes
  package dequant      n_deq_blocks * block_size f32
  quant input          n_q_elems f32
  package quant        row bytes        (flags & 1)
  ggml quant           row bytes        (flags & 2)
  ggml dequant         n_deq_blocks * block_size f32   (flags & 4)

The MXFP4 E8M0 exponent byte of the random blocks takes all 256 values.

Usage: python3 tools/make_quant_refs.py [outdir] [--types T1,T2,...]   (default tests/data/quant, all)
"""
import ctypes
import glob
import os
import struct
import sys

import numpy as np
from gguf import GGMLQuantizationType as QT
from gguf.constants import GGML_QUANT_SIZES
import gguf.quants

TYPES = ["F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K", "Q8_K",
         "IQ4_NL", "IQ4_XS", "MXFP4"]
PKG_QUANT = {"F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "MXFP4"}
# formats without test rows: none since qnext quantizes IQ4_NL/IQ4_XS too
DEQ_ONLY = set()
# llama-quantize quantizes these through quantize_<type>(src, dst, nrow, n_per_row, imatrix)
# (ggml_quantize_chunk), which searches the IQ4 group scales with ntry = 7;
# quantize_row_iq4_nl_ref searches none and gives other blocks, so it is not the reference
CHUNK_QUANT = {"IQ4_NL", "IQ4_XS"}

# byte offsets of the f16 scale fields in each block (Q8_K has an f32 at 0)
F16_FIELDS = {
    "Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "Q8_0": [0],
    "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208], "IQ4_NL": [0], "IQ4_XS": [0],
}


def load_ggml():
    """ggml's base library: $QNEXT_GGML_LIB (a libggml-base.so built without -march=native,
    so that no FMA contraction changes its float results), else the one bundled with
    llama-cpp-python, else None."""
    env = os.environ.get("QNEXT_GGML_LIB")
    if env:
        lib = ctypes.CDLL(env)
        lib.quantize_row_q4_K_ref  # must export the reference functions
        return lib
    try:
        import llama_cpp  # noqa: F401
    except Exception:
        return None
    base = os.path.dirname(llama_cpp.__file__)
    for pat in ("lib/libggml-base.so*", "lib/libggml.so*", "libggml-base.so*"):
        for p in sorted(glob.glob(os.path.join(base, pat))):
            try:
                lib = ctypes.CDLL(p)
                lib.quantize_row_q4_K_ref  # must export the reference functions
                return lib
            except (OSError, AttributeError):
                continue
    return None


def random_f16_scales(rng, n):
    """Finite f16 values: mostly normal-ish magnitudes of both signs, some zero,
    some subnormal, some large."""
    v = (rng.standard_normal(n) * 0.05).astype(np.float32)
    kind = rng.integers(0, 20, n)
    v[kind == 0] = 0.0
    v[kind == 1] = rng.uniform(-6e-5, 6e-5, (kind == 1).sum())  # subnormal range
    v[kind == 2] = rng.uniform(-1000, 1000, (kind == 2).sum())
    h = v.astype(np.float16)
    assert np.all(np.isfinite(h))
    return h


def random_raw_blocks(rng, name, nblocks):
    bs, ts = GGML_QUANT_SIZES[QT[name]]
    raw = rng.integers(0, 256, (nblocks, ts), dtype=np.uint8)
    if name == "F16":
        h = raw.view(np.uint16)
        nan = (h & 0x7C00) == 0x7C00
        nan &= (h & 0x03FF) != 0
        h[nan] &= 0xFC00 ^ 0x0400  # NaN -> finite (exponent 30); inf stays
    elif name in F16_FIELDS:
        for off in F16_FIELDS[name]:
            raw[:, off:off + 2] = random_f16_scales(rng, nblocks).view(np.uint8).reshape(nblocks, 2)
    elif name == "Q8_K":
        d = (rng.standard_normal(nblocks) * 0.01).astype(np.float32)
        d[::7] = 0.0
        raw[:, 0:4] = d.view(np.uint8).reshape(nblocks, 4)
    return raw


def test_rows(rng, name):
    """Rows of 256 values (a whole number of blocks for every type) of several kinds."""
    rows = []
    n = 256
    rows.append(rng.standard_normal(n))
    rows.append(rng.standard_normal(n) * 0.02)
    rows.append(rng.uniform(-1, 1, n))
    out = rng.standard_normal(n) * 0.1
    out[rng.integers(0, n, 6)] *= 300.0
    rows.append(out)
    rows.append(np.zeros(n))
    rows.append(rng.standard_normal(n) * 1e-30)   # scales underflow f16
    rows.append(rng.standard_normal(n) * 1e-6)
    rows.append(rng.standard_normal(n) * 3000.0)
    rows.append(np.full(n, 0.37))
    rows.append(np.abs(rng.standard_normal(n)) + 0.5)      # all positive (min > 0)
    rows.append(-np.abs(rng.standard_normal(n)) - 0.5)     # all negative
    rows.append(rng.integers(-16, 17, n) * 0.125)          # exact multiples: rounding ties
    rows.append(np.where(rng.random(n) < 0.8, 0.0, rng.standard_normal(n)))  # sparse
    a = rng.standard_normal(n)
    a[::32] = 0.0
    a[1::32] = 1e-4
    rows.append(a)
    x = np.concatenate(rows).astype(np.float32)
    if name in ("F16", "BF16"):
        # conversion edge cases: specials, overflow, subnormals, ties, boundaries
        f32 = np.float32
        special = np.array([np.inf, -np.inf, np.nan, -np.nan, 0.0, -0.0, 65504.0, 65519.99, 65520.0,
                            -65520.0, 1e10, 6.1e-5, 5.96e-8, 2.98e-8, 2.99e-8, 1e-40, -1e-45,
                            3.4e38, 1.0009765625, 1.00048828125, 1.00146484375, 1.0 + 2**-8,
                            1.0 + 3 * 2**-9], dtype=f32)
        ties = (np.arange(256, dtype=np.uint32) << 13 | 0x1000 | 0x3c000000).view(np.float32)
        bties = (np.arange(256, dtype=np.uint32) << 16 | 0x8000 | 0x3f000000).view(np.float32)
        rnd = rng.integers(0, 2**32, 4096, dtype=np.uint64).astype(np.uint32).view(np.float32)
        rnd = rnd[~np.isnan(rnd)]  # NaN payloads: checked by the closed-form tests in C
        extra = np.concatenate([special, ties, bties, rnd]).astype(np.float32)
        extra = extra[: len(extra) - len(extra) % 256] if len(extra) > 256 else extra
        x = np.concatenate([x, extra]).astype(np.float32)
    return x


def ggml_quant(lib, name, x):
    bs, ts = GGML_QUANT_SIZES[QT[name]]
    out = np.zeros(len(x) // bs * ts, dtype=np.uint8)
    xc = np.ascontiguousarray(x, dtype=np.float32)
    if name in CHUNK_QUANT:
        fn = getattr(lib, "quantize_%s" % name.lower())
        fn.restype = ctypes.c_size_t
        fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
        assert fn(xc.ctypes.data, out.ctypes.data, len(x) // 256, 256, None) == len(out)
        return out
    fn = getattr(lib, "quantize_row_%s_ref" % name.lower().replace("_k", "_K"))
    fn.restype = None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    fn(xc.ctypes.data, out.ctypes.data, ctypes.c_int64(len(x)))
    return out


def ggml_dequant(lib, name, raw):
    bs, ts = GGML_QUANT_SIZES[QT[name]]
    nb = raw.shape[0]
    out = np.zeros(nb * bs, dtype=np.float32)
    fn = getattr(lib, "dequantize_row_%s" % name.lower().replace("_k", "_K"))
    fn.restype = None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    rc = np.ascontiguousarray(raw)
    fn(rc.ctypes.data, out.ctypes.data, ctypes.c_int64(nb * bs))
    return out


def main():
    args = sys.argv[1:]
    only = None
    if "--types" in args:
        i = args.index("--types")
        only = set(args[i + 1].split(","))
        del args[i:i + 2]
    outdir = args[0] if args else "tests/data/quant"
    os.makedirs(outdir, exist_ok=True)
    lib = load_ggml()
    print("ggml library:", "found" if lib else "not found (K-quant byte references skipped)")
    total = 0
    for ti, name in enumerate(TYPES):
        if only is not None and name not in only:
            continue
        rng = np.random.default_rng(1000 + ti)
        qt = QT[name]
        bs, ts = GGML_QUANT_SIZES[qt]
        nblocks = 8192 // bs if bs == 1 else max(24, 6144 // bs)
        raw = random_raw_blocks(rng, name, nblocks)
        if name == "Q8_K":
            # the gguf package has no Q8_K class: closed form d * q, computed in f32
            d = raw[:, 0:4].copy().view(np.float32)
            q = raw[:, 4:260].view(np.int8).astype(np.float32)
            deq = (d * q).astype(np.float32).reshape(-1)
        else:
            deq = gguf.quants.dequantize(raw.reshape(-1).copy() if bs == 1 else raw, qt)
            deq = np.asarray(deq, dtype=np.float32).reshape(-1)
        x = np.zeros(0, dtype=np.float32) if name in DEQ_ONLY else test_rows(rng, name)
        assert len(x) % bs == 0
        flags = 0
        parts = [raw.tobytes(), deq.tobytes(), x.tobytes()]
        if name in PKG_QUANT:
            q = gguf.quants.quantize(x.reshape(-1, 256) if len(x) % 256 == 0 else x, qt)
            q = np.asarray(q).view(np.uint8).reshape(-1)
            assert len(q) == len(x) // bs * ts
            parts.append(q.tobytes())
            flags |= 1
        has_ggml_q = lib is not None and name not in ("F32", "F16", "BF16")
        if has_ggml_q:
            if len(x):
                parts.append(ggml_quant(lib, name, x).tobytes())
                flags |= 2
            parts.append(ggml_dequant(lib, name, raw).tobytes())
            flags |= 4
        head = b"QNQREF1\0" + struct.pack("<IIII", int(qt), nblocks, len(x), flags)
        data = head + b"".join(parts)
        path = os.path.join(outdir, name + ".bin")
        with open(path, "wb") as f:
            f.write(data)
        total += len(data)
        print("%-5s %7d bytes  flags=%d" % (name, len(data), flags))
    if only is not None:  # a partial run leaves the type tables alone
        print("total", total, "bytes")
        return
    # the whole ggml type table (id, block size, type size), to check quant.c's table
    with open(os.path.join(outdir, "types.txt"), "w") as f:
        for qt, (bs, ts) in sorted(GGML_QUANT_SIZES.items(), key=lambda kv: int(kv[0])):
            f.write("%s %d %d %d\n" % (qt.name, int(qt), bs, ts))
    if lib is not None:
        # ggml's own C table (authoritative where gguf-py differs, e.g. Q8_1)
        lib.ggml_type_size.restype = ctypes.c_size_t
        lib.ggml_blck_size.restype = ctypes.c_int64
        lib.ggml_type_name.restype = ctypes.c_char_p
        with open(os.path.join(outdir, "ggml_types.txt"), "w") as f:
            # ggml exports no type count and reads past its table for larger ids, so stop one
            # past the largest id gguf-py knows (ggml may be a little newer than gguf-py)
            for t in range(max(int(q) for q in QT) + 2):
                name = lib.ggml_type_name(t)
                try:
                    name.decode("ascii")
                except (AttributeError, UnicodeDecodeError):
                    break
                if lib.ggml_blck_size(t) > 0:
                    f.write("%s %d %d %d\n" % (name.decode().upper(), t, lib.ggml_blck_size(t), lib.ggml_type_size(t)))
    print("total", total, "bytes")


if __name__ == "__main__":
    main()
