#!/usr/bin/env bash
# `qnext run` end to end on a full model directory assembled here: the random fixture
# tests/fixtures/base_gqa (vocab 512) + the tokenizer and chat template of tests/data/tok512.
# Greedy answers must equal the transformers references of tests/data/tok512/run_refs.json
# (tools/make_run_refs.py) byte for byte, for --raw completions and for chat-template prompts;
# then stop strings, eos, generation_config.json, seeds and error handling.
set -u
Q=${QNEXT_BIN:-build/qnext}
tmp=$(mktemp -d); trap 'rm -rf $tmp' EXIT
m=$tmp/model
mkdir -p $m
cp tests/fixtures/base_gqa/config.json tests/fixtures/base_gqa/model.safetensors tests/data/tok512/tokenizer.json \
   tests/data/tok512/tokenizer_config.json $m/

QNEXT_BIN=$Q MODEL=$m TMP=$tmp python3 - <<'PY'
import json, os, subprocess, sys

Q, M, TMP = os.environ["QNEXT_BIN"], os.environ["MODEL"], os.environ["TMP"]
refs = json.load(open("tests/data/tok512/run_refs.json"))["cases"]
passed = failed = 0


def check(cond, what):
    global passed, failed
    if cond:
        passed += 1
    else:
        failed += 1
        print("FAIL:", what, file=sys.stderr)


def run(*args, model=M):
    p = subprocess.run([Q, "run", "-m", model, *args], capture_output=True, timeout=60)
    return p.returncode, p.stdout.decode("utf-8", "surrogateescape"), p.stderr.decode("utf-8", "replace")


def case_args(c):
    a = ["-p", c["prompt"], "-n", str(c["n"])]
    if c["mode"] == "raw":
        a.append("--raw")
    if "system" in c:
        a += ["--system", c["system"]]
    return a


# greedy answers equal the transformers references
for c in refs:
    rc, out, err = run(*case_args(c), "--temp", "0")
    check(rc == 0 and out == c["text"] + "\n", "%s %r: got %r want %r (%s)" % (c["mode"], c["prompt"], out, c["text"], err))
    why = "end token" if c["stopped_at_eos"] else "token limit"
    check(why in err and "tok/s" in err, "%r: stderr names the finish (%s) and the speed: %r" % (c["prompt"], why, err))
check(any(c["stopped_at_eos"] for c in refs), "some reference ends with the eos id")

# --no-mmap (weights read into memory) answers the same
c = refs[0]
rc, out, _ = run(*case_args(c), "--temp", "0", "--no-mmap")
check(rc == 0 and out == c["text"] + "\n", "--no-mmap: got %r want %r" % (out, c["text"]))

# top-k 1 is greedy at any temperature
c = refs[0]
rc, out, _ = run(*case_args(c), "--temp", "5", "--top-k", "1", "--seed", "3")
check(out == c["text"] + "\n", "top-k 1 at T=5 is greedy")

# stop strings: the text before the first occurrence, the stop string not printed; also a
# stop string that spans several tokens
for c in refs[:3]:
    t = c["text"]
    for start, length in ((len(t) // 2, 3), (len(t) // 3, 6)):
        stop = t[start:start + length]
        want = t[:t.find(stop)]
        rc, out, err = run(*case_args(c), "--temp", "0", "--stop", stop)
        check(rc == 0 and out == want + "\n", "stop %r: got %r want %r" % (stop, out, want))
        check("stop string" in err, "stop reported: %r" % err)
    # two stop strings: the one completed first wins
    s1, s2 = t[len(t) // 2:len(t) // 2 + 2], t[len(t) // 4:len(t) // 4 + 2]
    want = t[:min(t.find(s1), t.find(s2))]
    rc, out, _ = run(*case_args(c), "--temp", "0", "--stop", s1, "--stop", s2)
    check(out == want + "\n", "two stops: got %r want %r" % (out, want))

# a stop string that never occurs changes nothing
c = refs[1]
rc, out, _ = run(*case_args(c), "--temp", "0", "--stop", "\u2603never")
check(out == c["text"] + "\n", "a stop string that never matches")

# -n 0 prints nothing
rc, out, _ = run(*case_args(c), "--temp", "0", "-n", "0")
check(rc == 0 and out == "\n", "-n 0")

# seeds: the same seed gives the same text, another seed another one
outs = [run(*case_args(refs[0]), "--temp", "1.5", "--seed", s)[1] for s in ("7", "7", "8")]
check(outs[0] == outs[1], "same seed, same text")
check(outs[0] != outs[2], "another seed, another text")

# generation_config.json: do_sample false is greedy; its eos ids end the answer; the command
# line overrides its temperature
gc = os.path.join(M, "generation_config.json")
c = refs[0]
with open(gc, "w") as f:
    json.dump({"do_sample": False, "temperature": 0.9, "eos_token_id": [511]}, f)
rc, out, _ = run(*case_args(c))
check(out == c["text"] + "\n", "do_sample false is greedy")
with open(gc, "w") as f:
    json.dump({"do_sample": True, "temperature": 1.3, "top_k": 50, "eos_token_id": [511, c["ids"][5]]}, f)
rc, out, _ = run(*case_args(c), "--temp", "0")
tok = subprocess.run([Q, "detokenize", "-m", M, "--ids", " ".join(map(str, c["ids"][:5]))], capture_output=True)
check(out == tok.stdout.decode("utf-8", "surrogateescape") + "\n",
      "generation_config eos list ends the answer at the 6th id: %r" % out)
os.unlink(gc)

# errors: one line, exit 1 for a model problem, 2 for a usage problem
rc, out, err = run("-p", "x", model=os.path.join(TMP, "nothing"))
check(rc == 1 and len(err.strip().splitlines()) == 1 and "config.json" in err, "missing model: %d %r" % (rc, err))
rc, out, err = run("-p", "x", model="tests/fixtures/base_gqa")
check(rc == 1 and len(err.strip().splitlines()) == 1 and "tokenizer.json" in err, "no tokenizer: %d %r" % (rc, err))
rc, out, err = run("--raw")
check(rc == 2 and "-p" in err, "missing -p: %d %r" % (rc, err))
rc, out, err = run("-p", "x", "--bogus")
check(rc == 2 and "unknown option" in err, "unknown option: %r" % err)
rc, out, err = run("-p", "x", "--top-p", "0")
check(rc == 2 and "top-p" in err, "bad top-p: %r" % err)
rc, out, err = run("-p", "x" * 50, "--raw", "--ctx", "8")
check(rc == 1 and "context" in err, "prompt longer than the context: %d %r" % (rc, err))

# --json / --json-schema: sampled answers of the random model are whatever the constraint let
# through; each must parse (json) and validate (jsonschema: properties without
# additionalProperties are closed, as docs/SERVER.md says), with --raw and with the template
import jsonschema
schema = {"type": "object", "properties": {"kind": {"enum": ["a", "b"]}, "n": {"type": "integer"},
                                           "ok": {"type": "boolean"}}, "required": ["kind", "n"]}
closed = dict(schema, additionalProperties=False)
sfile = os.path.join(TMP, "schema.json")
json.dump(schema, open(sfile, "w"))
for seed in range(3):
    for extra in ([], ["--raw"]):
        for how in (["-j", json.dumps(schema)], ["--json-schema-file", sfile]):
            rc, out, err = run("-p", "Describe it", "-n", "900", "--temp", "1", "--seed", str(seed), *extra, *how)
            check(rc == 0 and "end token" in err, "--json-schema answer ended: %r %r" % (out, err))
            try:
                jsonschema.validate(json.loads(out), closed)
                check(True, "")
            except (ValueError, jsonschema.ValidationError) as e:
                check(False, "--json-schema answer %r: %s" % (out, e))
    rc, out, err = run("-p", "Describe it", "-n", "300", "--temp", "1", "--seed", str(seed), "--json")
    if "end token" in err:
        check(isinstance(json.loads(out), dict), "--json answer is an object: %r" % out)
# A "<think>" typed in the user's message does not start a reasoning block (qnext-tiny's template
# is an instruct one and its vocabulary has the tag): the schema applies from the first token.
for seed in range(2):
    rc, out, err = run("-p", "What does <think> mean?", "-n", "400", "--temp", "1", "--seed", str(seed),
                       "-j", json.dumps(schema), model="models/qnext-tiny")
    try:
        jsonschema.validate(json.loads(out), closed)
        check(rc == 0, "typed <think>: rc %d" % rc)
    except (ValueError, jsonschema.ValidationError) as e:
        check(False, "typed <think>: answer %r: %s" % (out, e))
rc, out, err = run("-p", "x", "-j", '{"type": "string", "pattern": "a"}')
check(rc == 1 and "'pattern' is not supported" in err and err.count("\n") == 1, "unsupported schema: one line: %r" % err)
rc, out, err = run("-p", "x", "-j", '{"type": ')
check(rc == 1 and "--json-schema" in err, "malformed schema: %r" % err)
rc, out, err = run("-p", "x", "--json-schema-file", os.path.join(TMP, "nope.json"))
check(rc == 2 and "cannot open" in err, "missing schema file: rc %d %r" % (rc, err))

print("test_run_cli: %d passed, %d failed" % (passed, failed))
sys.exit(1 if failed else 0)
PY
