#!/usr/bin/env bash
# `qnext chat` through a pseudo-terminal (so it sees a TTY and uses libedit when built with
# it), on the random fixture base_gqa + the tok512 tokenizer and Qwen3-Next Instruct template.
# Types turns, /save, /reset, /system and a """ block, and checks:
#   - greedy answers equal the transformers references (tests/data/tok512/run_refs.json),
#     compared through the JSON that /save writes;
#   - turn 2 reuses the session: the --verbose line says it reused exactly the ids of turn 1
#     (its prompt and the answer ids that were fed) and fed only the rest;
#   - /reset starts over (reused 0), /system sets the system message, /quit exits 0.
set -u
Q=${QNEXT_BIN:-build/qnext}
tmp=$(mktemp -d); trap 'rm -rf $tmp' EXIT
m=$tmp/model
mkdir -p $m
cp tests/fixtures/base_gqa/config.json tests/fixtures/base_gqa/model.safetensors tests/data/tok512/tokenizer.json \
   tests/data/tok512/tokenizer_config.json $m/

QNEXT_BIN=$Q MODEL=$m TMP=$tmp python3 - <<'PY'
import json, os, pty, re, select, signal, sys, time

Q, M, TMP = os.environ["QNEXT_BIN"], os.environ["MODEL"], os.environ["TMP"]
refs = {c["prompt"]: c for c in json.load(open("tests/data/tok512/run_refs.json"))["cases"] if c["mode"] == "chat"}
story, math = refs["Tell me a story."], refs["What is 2 + 2?"]
assert story["n"] == math["n"]
passed = failed = 0


def check(cond, what):
    global passed, failed
    if cond:
        passed += 1
    else:
        failed += 1
        print("FAIL:", what, file=sys.stderr)


def spawn(model, *extra, n=story["n"]):
    global pid, fd, buf
    pid, fd = pty.fork()
    if pid == 0:
        env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
        env.update(TERM="dumb", OMP_NUM_THREADS="1")
        os.execve(Q, [Q, "chat", "-m", model, "-n", str(n), "--temp", "0", "--verbose", *extra], env)
    buf = b""


def finish():
    """Sends /quit and returns the exit status (None if it did not exit)."""
    send("/quit")
    deadline = time.time() + 10
    while time.time() < deadline:
        wpid, st = os.waitpid(pid, os.WNOHANG)
        if wpid:
            return st
        try:
            os.read(fd, 65536)
        except OSError:
            pass
        time.sleep(0.05)
    return None


def kill():
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except OSError:
        pass


def expect(pattern, timeout=30):
    """Reads until the regex matches the output since the last match; returns the text before it."""
    global buf
    rx = re.compile(pattern.encode())
    end = time.time() + timeout
    while True:
        mt = rx.search(buf)
        if mt:
            before = buf[:mt.start()]
            buf = buf[mt.end():]
            return before.decode("utf-8", "replace"), mt
        left = end - time.time()
        if left <= 0:
            raise TimeoutError("waiting for %r; output so far: %r" % (pattern, buf[-2000:]))
        r, _, _ = select.select([fd], [], [], left)
        if r:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                chunk = b""
            if not chunk:
                raise EOFError("chat exited while waiting for %r; output: %r" % (pattern, buf[-2000:]))
            buf += chunk


def send(line):
    os.write(fd, line.encode() + b"\r")


def saved(path):
    with open(path) as f:
        return json.load(f)


spawn(M)
try:
    expect(r">>> ")
    # turn 1
    send(story["prompt"])
    _, mt = expect(r"reused (\d+) tokens, fed (\d+)")
    check(mt.group(1) == b"0" and int(mt.group(2)) == len(story["prompt_ids"]),
          "turn 1 feeds the prompt: %r" % mt.group(0))
    expect(r"\[(\d+) tokens, [0-9.]+ tok/s\]")
    expect(r">>> ")
    # turn 2: only the new part is fed
    send(math["prompt"])
    _, mt = expect(r"context: (\d+) tokens; reused (\d+) tokens, fed (\d+)")
    ctx, reused, fed = (int(x) for x in mt.groups())
    # the session holds turn 1's prompt and the answer ids that were fed (all but the last:
    # the answer ended at the token limit, and the last sampled id is fed with turn 2)
    want_reused = len(story["prompt_ids"]) + len(story["ids"]) - 1
    check(not story["stopped_at_eos"] and reused == want_reused and fed == ctx - reused and fed < 30,
          "turn 2 reuses the history: %r (want reused %d)" % (mt.group(0), want_reused))
    check(b"rewound" not in mt.group(0), "turn 2 needs no rewind")
    expect(r"tok/s\]")
    expect(r">>> ")
    p1 = os.path.join(TMP, "chat1.json")
    send("/save " + p1)
    expect(r"saved 4 messages")
    expect(r">>> ")
    msgs = saved(p1)
    check([m["role"] for m in msgs] == ["user", "assistant", "user", "assistant"], "saved roles: %r" % msgs)
    check(msgs[0]["content"] == story["prompt"] and msgs[2]["content"] == math["prompt"], "saved user turns")
    check(msgs[1]["content"] == story["text"], "turn 1 answer equals the reference: %r vs %r" %
          (msgs[1]["content"], story["text"]))

    # /reset, then /system: the answer must equal the reference with that system message
    send("/reset")
    expect(r"conversation reset")
    expect(r">>> ")
    send("/system " + math["system"])
    expect(r"system message set")
    expect(r">>> ")
    send(math["prompt"])
    _, mt = expect(r"reused (\d+) tokens, fed (\d+)")
    check(mt.group(1) == b"0" and int(mt.group(2)) == len(math["prompt_ids"]),
          "after /reset nothing is reused: %r" % mt.group(0))
    expect(r"tok/s\]")
    expect(r">>> ")
    # a multi-line block
    send('"""')
    expect(r"\.\.\. ")
    send("line one")
    expect(r"\.\.\. ")
    send('line two"""')
    expect(r"tok/s\]")
    expect(r">>> ")
    # and a line continued with a backslash
    send("first\\")
    expect(r"\.\.\. ")
    send("second")
    expect(r"tok/s\]")
    expect(r">>> ")
    p2 = os.path.join(TMP, "chat2.json")
    send("/save " + p2)
    expect(r"saved 7 messages")
    expect(r">>> ")
    msgs = saved(p2)
    check([m["role"] for m in msgs] == ["system", "user", "assistant", "user", "assistant", "user", "assistant"],
          "roles after /system: %r" % [m["role"] for m in msgs])
    check(msgs[0]["content"] == math["system"], "system message saved")
    check(msgs[2]["content"] == math["text"], "answer with the system message equals the reference: %r vs %r" %
          (msgs[2]["content"], math["text"]))
    check(msgs[3]["content"] == "line one\nline two", "\"\"\" block: %r" % msgs[3]["content"])
    check(msgs[5]["content"] == "first\nsecond", "backslash continuation: %r" % msgs[5]["content"])

    # /load the first conversation, then continue it: the saved messages are rendered again
    send("/load " + p1)
    expect(r"loaded 4 messages")
    expect(r">>> ")
    send("/help")
    expect(r"/save FILE")
    expect(r">>> ")
    status = finish()
    check(status is not None and os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, "/quit exits 0: %r" % status)
except (TimeoutError, EOFError) as e:
    check(False, str(e))
    kill()

# The Thinking template: the answer opens inside <think> (shown dimmed), and turn 2 renders
# turn 1's answer without the "<think>\n" that the generation prompt had, so the session must
# rewind to the snapshot before turn 1's "<|im_start|>assistant" and feed from there. The
# answers must equal transformers' greedy answers for the conversation as rendered.
think = json.load(open("tests/data/tok512/run_refs.json"))["thinking_chat"]
MT = os.path.join(TMP, "think")
os.makedirs(MT)
for f in os.listdir(M):
    os.symlink(os.path.join(M, f), os.path.join(MT, f))
with open(os.path.join(MT, "chat_template.jinja"), "w") as f:
    f.write(json.load(open("tests/data/qwen3-tokenizer/tokenizer_config.thinking.json"))["chat_template"])
t1, t2 = think["turns"]
assert think["n"] == story["n"]
for hide in (False, True):
    spawn(MT, *(["--hide-thinking"] if hide else []))
    try:
        expect(r">>> ")
        send(t1["prompt"])
        _, mt = expect(r"reused (\d+) tokens, fed (\d+)")
        check(int(mt.group(2)) == len(t1["prompt_ids"]), "thinking turn 1 prompt: %r" % mt.group(0))
        answer, _ = expect(r"(\x1b\[2m)?\[(\d+) tokens, [0-9.]+ tok/s\]")
        piece = "ne\ufffd e lzero*%;in"  # a piece of turn 1's answer, all of it reasoning
        assert piece in t1["text"] and "</think>" not in t1["text"]
        if hide:
            check("\x1b[2m" not in answer and piece not in answer, "--hide-thinking hides the reasoning: %r" % answer)
        else:
            check("\x1b[2m" + t1["text"] + "\x1b[0m" in answer.replace("\r\n", "\n"), "reasoning shown dimmed: %r" % answer)
        expect(r">>> ")
        send(t2["prompt"])
        _, mt = expect(r"context: (\d+) tokens; reused (\d+) tokens, fed (\d+)(.*)\]")
        ctx, reused, fed = (int(x) for x in mt.groups()[:3])
        marker = max(i for i, t in enumerate(t1["prompt_ids"]) if t == 509)  # <|im_start|> of the assistant turn
        check(ctx == len(t2["prompt_ids"]) and reused == marker and fed == ctx - marker and b"rewound" in mt.group(4),
              "thinking turn 2 rewinds to turn 1's assistant header: %r (want reused %d)" % (mt.group(0), marker))
        expect(r"tok/s\]")
        expect(r">>> ")
        p3 = os.path.join(TMP, "think%d.json" % hide)
        send("/save " + p3)
        expect(r"saved 4 messages")
        expect(r">>> ")
        msgs = saved(p3)
        check(msgs[1]["content"] == t1["text"] and msgs[3]["content"] == t2["text"],
              "thinking answers equal the references: %r" % [m["content"] for m in msgs])
        status = finish()
        check(status is not None and os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, "thinking /quit")
    except (TimeoutError, EOFError) as e:
        check(False, str(e))
        kill()

# Ctrl-C: stops the answer being generated (the greedy answer to this prompt runs for 1209
# tokens before its end token; ^C is typed as soon as the first bytes of it arrive), and at the
# prompt it does not end the program.
spawn(M, "--ctx", "4096", n=-1)
try:
    expect(r">>> ")
    send(story["prompt"])
    expect(r"fed \d+.*\]\r\n")
    while len(buf) < 4:
        r, _, _ = select.select([fd], [], [], 10)
        if not r:
            break
        buf += os.read(fd, 65536)
    os.write(fd, b"\x03")
    _, mt = expect(r"\(stopped\)\r\n(\x1b\[2m)?\[(\d+) tokens")
    check(int(mt.group(2)) < 1209, "Ctrl-C stopped the answer after %s tokens" % mt.group(2))
    expect(r">>> ")
    os.write(fd, b"\x03")  # at the prompt: ignored
    time.sleep(0.2)
    p4 = os.path.join(TMP, "stopped.json")
    send("/save " + p4)
    expect(r"saved 2 messages")
    msgs = saved(p4)
    check(msgs[1]["role"] == "assistant" and len(msgs[1]["content"]) > 0, "the stopped answer is kept")
    status = finish()
    check(status is not None and os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, "Ctrl-C did not end chat: %r" % status)
except (TimeoutError, EOFError) as e:
    check(False, str(e))
    kill()

print("test_chat_pty: %d passed, %d failed" % (passed, failed))
sys.exit(1 if failed else 0)
PY
