#!/usr/bin/env python3
"""make_llama_quant_refs.py - what llama.cpp itself writes for the K-quant and IQ4_XS mixes, as a small table.

Runs an existing llama.cpp checkout (it is neither fetched nor built here; docs/COMPAT.md says how it was
built): convert_hf_to_gguf.py --outtype bf16 (pre-tokenizer name forced to "qwen2": the test vocabularies
use Qwen2's pre-tokenizer but their hash is not in llama.cpp's list), then llama-quantize to Q6_K, Q5_K_M,
Q4_K_M and IQ4_XS (IQ4_NL is left out: llama-quantize stops on the 48-wide tensors of both models, having no
fallback for it, while IQ4_XS falls back to IQ4_NL and then F16), for
  - base_gqa+tok512: tests/fixtures/base_gqa with the tokenizer of tests/data/tok512 (8 experts: the
    8-expert rules; every width a fallback case),
  - qnext-tiny: models/qnext-tiny (MTP layer as the nextn block, tied embeddings, 8 experts, hidden 320).
For every output tensor it records ggml type, shape, size and CRC-32 (zlib) of its data bytes in
tests/data/gguf_models/llama_quantize_refs.json; test_gguf_models.c requires `qnext quantize` to write the
same (every metadata value is compared separately against a converter file there).

Usage: python3 tools/make_llama_quant_refs.py [/work/llama.cpp]
"""
import json
import os
import subprocess
import sys
import tempfile
import zlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LLAMA = sys.argv[1] if len(sys.argv) > 1 else "/work/llama.cpp"
sys.path.insert(0, os.path.join(LLAMA, "gguf-py"))
import gguf  # noqa: E402  (llama.cpp's own gguf-py)

FORCE_PRE = """
import runpy, sys
sys.path.insert(0, {llama!r}); sys.path.insert(0, {llama!r} + '/gguf-py')
import conversion.base as base
for name in dir(base):
    cls = getattr(base, name)
    if isinstance(cls, type) and 'get_vocab_base_pre' in cls.__dict__:
        cls.get_vocab_base_pre = lambda self, tokenizer: 'qwen2'
sys.argv = ['convert_hf_to_gguf.py'] + sys.argv[1:]
runpy.run_path({llama!r} + '/convert_hf_to_gguf.py', run_name='__main__')
"""


def describe(path):
    r = gguf.GGUFReader(path)
    out = {}
    for t in r.tensors:
        out[t.name] = {"type": t.tensor_type.name, "ne": [int(x) for x in t.shape],
                       "bytes": int(t.data.nbytes), "crc32": "%08x" % zlib.crc32(t.data.tobytes())}
    return out


def main():
    commit = subprocess.run(["git", "-C", LLAMA, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    tmp = tempfile.mkdtemp()
    conv = os.path.join(tmp, "convert.py")
    open(conv, "w").write(FORCE_PRE.format(llama=LLAMA))
    bg = os.path.join(tmp, "base_gqa+tok512")
    os.makedirs(bg)
    for src, f in (("tests/fixtures/base_gqa", "config.json"), ("tests/fixtures/base_gqa", "model.safetensors"),
                   ("tests/data/tok512", "tokenizer.json"), ("tests/data/tok512", "tokenizer_config.json")):
        os.symlink(os.path.join(ROOT, src, f), os.path.join(bg, f))
    models = {"base_gqa+tok512": (bg, ["--no-mtp"]), "qnext-tiny": (os.path.join(ROOT, "models/qnext-tiny"), [])}
    refs = {"llama_cpp_commit": commit, "about": __doc__.split("\n\n")[1], "models": {}}
    for name, (d, extra) in models.items():
        bf16 = os.path.join(tmp, name + ".bf16.gguf")
        subprocess.run([sys.executable, conv, d, "--outtype", "bf16", "--outfile", bf16] + extra, check=True,
                       capture_output=True)
        refs["models"][name] = {}
        for mix in ("Q6_K", "Q5_K_M", "Q4_K_M", "IQ4_XS"):
            out = os.path.join(tmp, f"{name}.{mix}.gguf")
            subprocess.run([os.path.join(LLAMA, "build/bin/llama-quantize"), bf16, out, mix, "2"], check=True,
                           capture_output=True)
            refs["models"][name][mix] = describe(out)
            print(name, mix, len(refs["models"][name][mix]), "tensors")
    json.dump(refs, open(os.path.join(ROOT, "tests/data/gguf_models/llama_quantize_refs.json"), "w"), indent=0)


if __name__ == "__main__":
    main()
