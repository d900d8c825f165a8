#!/usr/bin/env bash
# tokenizer_bench.sh - encoding speed of qnext's tokenizer vs Hugging Face `tokenizers` (Python,
# single thread) on the same few-MB mixed text, plus an id-for-id comparison of both outputs.
#
# The text is built from files found on a Debian system (licence and copyright texts for English
# prose, the Python standard library for code) and the multilingual / emoji / whitespace cases of
# tests/data/tokenizer_refs.json, shuffled line by line with a fixed seed.
# Usage: bench/tokenizer_bench.sh [MB (default 4)] [repeats (default 3)]
set -euo pipefail
cd "$(dirname "$0")/.."
MB=${1:-4}
REPS=${2:-3}
BIN=${QNEXT_BIN:-build/qnext}
DIR=tests/data/qwen3-tokenizer
TEXT=${TMPDIR:-/tmp}/qnext_tokenizer_bench.txt
[ -x "$BIN" ] || make >/dev/null

python3 - "$TEXT" "$MB" <<'PY'
import glob, json, random, sys, sysconfig
out, mb = sys.argv[1], float(sys.argv[2])
rng = random.Random(1234)
prose = []
for f in sorted(glob.glob("/usr/share/common-licenses/*") + glob.glob("/usr/share/doc/*/copyright"))[:400]:
    try: prose += open(f, encoding="utf-8").read().splitlines(keepends=True)
    except (UnicodeDecodeError, IsADirectoryError, OSError): pass
code = []
for f in sorted(glob.glob(sysconfig.get_paths()["stdlib"] + "/*.py"))[:200]:
    try: code += open(f, encoding="utf-8").read().splitlines(keepends=True)
    except (UnicodeDecodeError, OSError): pass
refs = json.load(open("tests/data/tokenizer_refs.json", encoding="utf-8"))["encode"]
multi = [c["text"] + "\n" for c in refs if any(ord(ch) > 127 for ch in c["text"]) and len(c["text"]) < 200]
target = int(mb * 1e6)
parts, size = [], 0
while size < target:   # about 50% prose, 30% code, 20% multilingual by lines drawn
    r = rng.random()
    src = prose if r < 0.5 else code if r < 0.8 else multi
    i = rng.randrange(len(src))
    chunk = "".join(src[i:i + 20])
    parts.append(chunk)
    size += len(chunk.encode("utf-8"))
open(out, "w", encoding="utf-8", newline="").write("".join(parts))
PY
BYTES=$(wc -c < "$TEXT")
echo "text: $TEXT, $BYTES bytes"

CHUNK=${CHUNK:-2000}
echo "qnext (C, 1 thread), whole text in one call / in pieces of ~$CHUNK bytes:"
"$BIN" tokenize -m "$DIR" --bench "$REPS" < "$TEXT"
"$BIN" tokenize -m "$DIR" --bench "$REPS" --chunk "$CHUNK" < "$TEXT"

echo "HF tokenizers (Python, 1 thread), whole text in one call / in the same pieces:"
RAYON_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false python3 - "$TEXT" "$REPS" "$DIR/tokenizer.json" "$BIN" "$DIR" "$CHUNK" <<'PY'
import subprocess, sys, time
import tokenizers
from tokenizers import Tokenizer
path, reps, tj, qbin, qdir, chunk = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], int(sys.argv[6])
text = open(path, encoding="utf-8", newline="").read()
nbytes = len(text.encode("utf-8"))
t0 = time.perf_counter(); tok = Tokenizer.from_file(tj); t_load = time.perf_counter() - t0
ids = tok.encode(text, add_special_tokens=False).ids   # warm-up
t0, c0 = time.perf_counter(), time.process_time()
for _ in range(reps):
    ids = tok.encode(text, add_special_tokens=False).ids
dt, dc = time.perf_counter() - t0, time.process_time() - c0
print("tokenizers %s: load %.3f s; encode %d bytes x %d: %d tokens each; wall %.3f s = %.2f MB/s; cpu %.3f s = %.2f MB/s"
      % (tokenizers.__version__, t_load, nbytes, reps, len(ids), dt, nbytes * reps / dt / 1e6, dc, nbytes * reps / dc / 1e6))
# The same pieces as `qnext tokenize --chunk`: cut after the first newline past every chunk bytes.
data = text.encode("utf-8")
pieces, pos = [], 0
while pos < len(data):
    end = len(data)
    if chunk < len(data) - pos:
        nl = data.find(b"\n", pos + chunk)
        end = nl + 1 if nl >= 0 else len(data)
    pieces.append(data[pos:end].decode("utf-8"))
    pos = end
n = sum(len(tok.encode(p, add_special_tokens=False).ids) for p in pieces)   # warm-up
t0, c0 = time.perf_counter(), time.process_time()
for _ in range(reps):
    n = sum(len(tok.encode(p, add_special_tokens=False).ids) for p in pieces)
dt, dc = time.perf_counter() - t0, time.process_time() - c0
print("tokenizers %s: encode %d bytes x %d in pieces: %d tokens each; wall %.3f s = %.2f MB/s; cpu %.3f s = %.2f MB/s"
      % (tokenizers.__version__, nbytes, reps, n, dt, nbytes * reps / dt / 1e6, dc, nbytes * reps / dc / 1e6))
ours = subprocess.run([qbin, "tokenize", "-m", qdir], stdin=open(path, "rb"), capture_output=True, check=True).stdout.split()
same = list(map(int, ours)) == ids
print("ids identical to HF: %s (%d tokens)" % ("yes" if same else "NO", len(ids)))
sys.exit(0 if same else 1)
PY
