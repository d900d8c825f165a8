#!/usr/bin/env python3
"""make_tokenizer_refs.py - records reference token ids from Hugging Face `tokenizers` for the
Qwen3 tokenizer, for tests/test_tokenizer.c and tests/test_tokenize_cli.sh.

For every test string it stores:
  ids             Tokenizer.from_file(...).encode(s, add_special_tokens=False).ids
  ids_no_special  the same with encode_special_tokens=True (special-token text treated as text)
  decoded         Tokenizer.decode(ids, skip_special_tokens=False)
and checks that transformers' AutoTokenizer (the Qwen2TokenizerFast the model ships with) gives the
same ids. It also records decode-only cases: arbitrary id sequences (often splitting UTF-8
characters) with their HF decode, which exercises the U+FFFD replacement rules.

Usage: python3 tools/make_tokenizer_refs.py   (writes tests/data/tokenizer_refs.json)
"""
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOK_DIR = os.path.join(ROOT, "tests", "data", "qwen3-tokenizer")
OUT = os.path.join(ROOT, "tests", "data", "tokenizer_refs.json")
FLAGS_DIR = os.path.join(ROOT, "tests", "data", "tokenizer_flags")


def ensure(pkg):
    try:
        __import__(pkg)
    except ImportError:
        subprocess.check_call([sys.executable, "-m", "pip", "install", "--quiet", pkg])


ensure("tokenizers")
ensure("transformers")
import tokenizers  # noqa: E402
import transformers  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402


def hand_written():
    s = []
    # English, contractions with odd case, punctuation
    s += ["Hello, world!", "hello world", " Hello", "Hello ", "  Hello  ", "The quick brown fox jumps over the lazy dog.",
          "I'm here, you're there, we've been, they'll go, he'd say, it's, don't",
          "I'M HERE, YOU'RE THERE, WE'VE BEEN, THEY'LL GO, HE'D, IT'S, DON'T",
          "You'Ll, We'Ve, They'Re, I'D, She'S, isn'T", "'s 't 're 've 'm 'll 'd", "''s'''t", "rock'n'roll",
          "x'ſa and 'ſ", "O'Neil's dog", "l'homme d'affaires", "‘quoted’ “double” «guillemets»",
          "e.g. i.e. etc... !!! ??? ?!", "a-b_c.d/e\\f|g", "CamelCaseIdentifierName", "snake_case_name = 42",
          "ALLCAPS", "MiXeD CaSe", "Mr. Smith paid $3.50 for 2 apples @ 10:30am (UTC+2).",
          "Supercalifragilisticexpialidocious", "antidisestablishmentarianism"]
    # numbers, URLs
    s += ["1234567890", "3.14159265358979", "1,000,000", "-42", "+1 (555) 123-4567", "2024-01-31T12:34:56Z",
          "0x7fffffff", "1e-10", "١٢٣٤٥ ٦٧٨٩٠", "१२३४५", "一二三四五", "Ⅻ ⅻ ½ ¾ ² ³ ①②③", "𝟘𝟙𝟚 𝟛",
          "https://www.example.com/path/to/page?query=1&x=%20y#frag",
          "http://localhost:8080/api/v1/chat/completions", "mailto:someone@example.org",
          "ftp://ftp.gnu.org/gnu/gcc/gcc-12.2.0.tar.gz", "192.168.0.1:443", "[::1]:8000",
          "user@example.com", "C:\\Users\\me\\Documents\\file.txt", "~/.config/qnext/config.json"]
    # whitespace runs, tabs, CRLF, trailing spaces
    s += [" ", "  ", "   ", "\t", "\t\t", "\n", "\n\n", "\n\n\n", "\r\n", "\r\n\r\n", "\r", "a\rb", "a\r\nb", "a\n\nb",
          "a \n b", "a  \n\n  b  ", "a \t b", "a\t\tb", "line1\nline2\n", "line1\r\nline2\r\n", "  leading",
          "trailing  ", "trailing \n", "trailing\t", "mixed \t \n \r\n end", " \n \n \n", "word\n\n\n\nword",
          "    indented four", "\tindented tab", "        eight spaces", " " * 40, " " * 200 + "x", "\n" * 30,
          "a" + " " * 17 + "b", "x \u00a0y", "a\u3000\u3000b", "a\u2003b\u2009c", "a\u200bb", "a\u2028b\u2029c",
          "a\u0085b", "a\u000bb\u000cc", "\u3000\u3000", "end\u00a0", "a\u1680b", "a\u202f\u205fb", "\ufeffBOM"]
    # code
    s += ['#include <stdio.h>\nint main(void) {\n    printf("hello\\n");\n    return 0;\n}\n',
          "for (int i = 0; i < n; i++) { sum += a[i] * b[i]; }",
          "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
          "class Foo(Bar):\n\tdef __init__(self, *args, **kwargs):\n\t\tsuper().__init__(*args, **kwargs)\n",
          '{"name": "qnext", "version": [1, 2, 3], "nested": {"a": null, "b": true, "c": 1.5e-3}}',
          '{\n  "key": "value",\n  "list": [\n    1,\n    2\n  ]\n}',
          "SELECT id, name FROM users WHERE age >= 18 AND name LIKE '%smith%';",
          "x = lambda a, b: (a ** 2 + b ** 2) ** 0.5  # hypotenuse",
          "if (a != b && c <= d || !e) { return -1; } else if (x >>= 2) {}",
          "<div class=\"main\"><p>Hello &amp; welcome</p></div>",
          "```python\nprint('hi')\n```", "$ make -j4 && ./build/qnext --help 2>&1 | grep -i usage",
          "fn main() -> Result<(), Box<dyn Error>> { Ok(()) }", "std::vector<std::string> v{\"a\", \"b\"};",
          "#!/bin/bash\nset -euo pipefail\n", "a+=1;b-=2;c*=3;d/=4;e%=5", "/* comment */ // line comment",
          "    return x;\n}\n\n\n", "matrix[i][j] = matrix[i-1][j-1] + 1;", "@decorator\ndef f(): pass"]
    # scripts and languages
    s += ["你好，世界！", "我喜欢学习自然语言处理。今天天气很好，我们去公园散步吧。",
          "日本語のテキストを正しく分割できますか？カタカナとひらがなと漢字。", "東京都渋谷区",
          "한국어 텍스트도 잘 처리됩니다. 안녕하세요!", "مرحبا بالعالم، كيف حالك اليوم؟",
          "العربية: الحروف المتصلة والتشكيل مثل مَرْحَبًا", "שלום עולם, מה שלומך?", "עִבְרִית עם ניקוד",
          "नमस्ते दुनिया, आप कैसे हैं?", "हिन्दी में लिखा गया वाक्य।", "สวัสดีชาวโลก ภาษาไทยไม่มีช่องว่างระหว่างคำ",
          "Привет, мир! Как дела?", "Съешь же ещё этих мягких французских булок, да выпей чаю.",
          "Γειά σου Κόσμε! Ελληνικά με τόνους: άέήίόύώ ΐΰ", "Ἐν ἀρχῇ ἦν ὁ λόγος", "Բարեւ աշխարհ",
          "გამარჯობა მსოფლიო", "ሰላም ለዓለም", "வணக்கம் உலகம்", "నమస్కారం", "ನಮಸ್ಕಾರ", "നമസ്കാരം",
          "হ্যালো বিশ্ব", "ਸਤਿ ਸ੍ਰੀ ਅਕਾਲ", "નમસ્તે", "ଓଡ଼ିଆ", "සිංහල", "မြန်မာ", "ខ្មែរ", "ລາວ", "བོད་ཡིག",
          "Tiếng Việt có dấu: Xin chào thế giới", "Zażółć gęślą jaźń", "Příliš žluťoučký kůň úpěl ďábelské ódy",
          "Ærøskøbing Åland Øresund", "Größe Straße Fußgänger", "Ça va? Où est la bibliothèque?",
          "¿Qué tal? ¡Muy bien!", "İstanbul ığdır ŞÇÖÜ", "Ελλάδα και Türkiye", "ᚠᛇᚻ᛫ᛒᛦᚦ", "ꦧꦱꦗꦮ",
          "ᐃᓄᒃᑎᑐᑦ", "𐌰𐌱𐌲 Gothic", "𓀀𓀁𓀂 hieroglyphs", "ʻŌlelo Hawaiʻi", "Ŋŋ Ɛɛ Ɔɔ",
          "Mixed: English中文日本語한국어العربيةעבריתहिन्दी", "中文English混合text测试123数字",
          "ㄅㄆㄇㄈ 注音", "ｆｕｌｌｗｉｄｔｈ　ＡＢＣ　１２３", "ﾊﾝｶｸｶﾀｶﾅ"]
    # emoji, ZWJ, flags, skin tones, variation selectors
    s += ["😀😃😄😁", "👍🏽 thumbs", "👨‍👩‍👧‍👦 family", "👩🏽‍💻 coder", "🏳️‍🌈 flag", "🇺🇸🇬🇧🇯🇵🇨🇳",
          "🇩🇪 and 🇫🇷", "❤️ ♥ ❤", "☺️ ☺︎", "1️⃣ #️⃣", "🧑‍🤝‍🧑", "🏴󠁧󠁢󠁳󠁣󠁴󠁿 Scotland", "emoji😀in😀text",
          "🤖: beep boop 🦾", "Ok 👌🏿👌🏻", "★☆✓✗→←↑↓⇒∀∃∈∉∑∏√∞≈≠≤≥", "©®™℃℉№", "€£¥₹₽₿$"]
    # combining marks and NFC
    s += ["e\u0301", "cafe\u0301", "Cafe\u0301 au lait", "a\u0308o\u0308u\u0308", "n\u0303", "A\u030a",
          "\u1100\u1161\u11a8", "\u1112\u1161\u11ab\u1100\u1173\u11af", "\u1100\u1161 \u1102\u1161",
          "e\u0301\u0301", "\u0065\u0323\u0302", "\u1ebf", "o\u0302\u0301", "\u212b", "\u2126", "\u00c5", "A\u0301\u0328",
          "\u0915\u093c", "\u0958", "\u05d0\u05b7", "\ufb2e", "\u0644\u0627", "\u2000", "\u2001", "\u1e9b\u0323",
          "x\u0300\u0301\u0302\u0303\u0304y", "\u0301 leading combining", "ﬁ ligature ﬀ ﬃ", "\u00bd \u2155",
          "\u0041\u030a\u0042", "\uac00\u11a8", "\u1100\u1100\u1161", "\u0f73 \u0f75", "\u0344", "\u0340\u0341"]
    # marks newer than Unicode 9 (HF's NFC data): HF gives them class 0, so no reordering/composing
    s += ["x\u07fd\u0334", "a\u0301\u1ac0\u0323", "\U00011935\U00011930", "e\u1df6\u0316",
          "\u0915\u093c\u0c3c\u094d", "a\u0323\u0898\u0301", "o\u0302\U0001e4ec\u0301", "\U00011347\U0001133b\U0001133e"]
    # special-token text inside user content
    s += ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<think>", "</think>", "<tool_call>", "</tool_call>",
          "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n",
          "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n",
          "text <|im_end|> more", "x<|im_end|>y", "<|im_end|><|im_end|>", "<|im_start|><|im_end|>",
          "<think>\nLet me think.\n</think>\n\nAnswer: 42", "<think></think>", "a<think>b</think>c",
          "<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_call>", "<tool_response>ok</tool_response>",
          "<|im_start", "im_start|>", "<|im_end", "<|im_end|", "<<|im_end|>>", "<|<|im_end|>|>", "< think >",
          "<THINK>", "<|IM_END|>", "<|fim_prefix|>def<|fim_suffix|>\n<|fim_middle|>", "<|repo_name|>x<|file_sep|>y",
          "<|vision_start|><|image_pad|><|vision_end|>", "<|box_start|>(1,2)<|box_end|>", "<|endoftext|>trailing",
          "  <|im_end|>  ", "\n<|im_end|>\n", "é<|im_end|>é", "e<|im_end|>\u0301", "<|endoftext|><|endoftext|>",
          "<|object_ref_start|>obj<|object_ref_end|>", "<|quad_start|><|quad_end|><|vision_pad|><|video_pad|>"]
    # miscellany
    s += ["", "a", "A", "0", "!", "'", "''", "'''", "\"", "\\", "\x00", "a\x00b", "\x01\x02\x03\x7f", "\x1b[31mred\x1b[0m",
          "\u00ff\u0100", "\U0010FFFD", "\ue000\uf8ff private use", "\U000F0000", "\ufffd replacement",
          "\uffff\ufffe nonchars", "tab\there", "....", "----------", "==========", "**bold** _it_ `code`",
          "# Title\n\n- item 1\n- item 2\n\n> quote\n", "| a | b |\n|---|---|\n| 1 | 2 |", "a" * 300,
          "ab" * 150, "的" * 100, "😀" * 50, "1" * 50, "!@#$%^&*()_+-=[]{};':\",./<>?`~", "a.b.c.d.e.f.g",
          "🙂\n🙂\r\n🙂", "x\u0300" * 20, "\U0001F468\u200d" * 10, "Hello\u200dWorld", "\u00a0\u00a0x",
          "\u2028\u2028", " \u3000 x", "a \u00a0\u00a0 b", "!\n", "!\r\n\r\n", " !\n\n", "!!\n \n", " 'll",
          " 's", "'s'", "x'", "x'ſ", "don’t", "ʼn", "aʼ", "x\u02bcs", "ß SS ẞ", "İi ıI", "Kelvin \u212a",
          "ǅ ǈ ǋ Dž", "Ⓐⓑ", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "𝐁𝐨𝐥𝐝", "ℌℑℜ", "ⅰⅱⅲ", "〇〡〢", "𖭐𖭑", "꙰", "ߊ ߋ", "ⵜⴰⵎⴰⵣⵉⵖⵜ"]
    return s


def random_strings(rng):
    """Deterministic random strings: code points across planes (no surrogates), mixed with
    ASCII, whitespace and script blocks, so that the matcher sees unusual neighbours."""
    out = []
    def rand_cp(rng):
        r = rng.random()
        if r < 0.25:
            return rng.randint(0x20, 0x7e)
        if r < 0.35:
            return rng.choice([0x09, 0x0a, 0x0d, 0x20, 0x20, 0xa0, 0x3000, 0x2003, 0x85, 0x0b, 0x27])
        if r < 0.55:
            return rng.randint(0x80, 0x7ff)
        if r < 0.80:
            while True:
                c = rng.randint(0x800, 0xffff)
                if not 0xd800 <= c <= 0xdfff:
                    return c
        if r < 0.95:
            return rng.randint(0x10000, 0x2ffff)
        return rng.randint(0x30000, 0x10ffff)
    for k in range(80):
        n = rng.randint(1, 60) if k < 60 else rng.randint(200, 1500)
        out.append("".join(chr(rand_cp(rng)) for _ in range(n)))
    # random words from a small alphabet mixing cases, quotes and digits (contraction edge cases)
    alpha = "aAsStTmMdDlLrReEvV'' 0123\n\r\t.,ſ"
    for _ in range(30):
        out.append("".join(rng.choice(alpha) for _ in range(rng.randint(5, 80))))
    return out


def main():
    tok_path = os.path.join(TOK_DIR, "tokenizer.json")
    hf = Tokenizer.from_file(tok_path)
    hf_nospecial = Tokenizer.from_file(tok_path)
    hf_nospecial.encode_special_tokens = True

    tmp = tempfile.mkdtemp()
    shutil.copy(tok_path, os.path.join(tmp, "tokenizer.json"))
    shutil.copy(os.path.join(TOK_DIR, "tokenizer_config.instruct.json"), os.path.join(tmp, "tokenizer_config.json"))
    at = AutoTokenizer.from_pretrained(tmp)

    rng = random.Random(20240917)
    strings = hand_written() + random_strings(rng)
    seen, uniq = set(), []
    for s in strings:
        if s not in seen:
            seen.add(s)
            uniq.append(s)

    enc = []
    for s in uniq:
        ids = hf.encode(s, add_special_tokens=False).ids
        ids2 = at.encode(s, add_special_tokens=False)
        if ids != ids2:
            sys.exit("tokenizers and transformers disagree on %r: %s vs %s" % (s, ids, ids2))
        ids_ns = hf_nospecial.encode(s, add_special_tokens=False).ids
        dec = hf.decode(ids, skip_special_tokens=False)
        dec2 = at.decode(ids, skip_special_tokens=False)
        if dec != dec2:
            sys.exit("decode disagrees on %r" % s)
        item = {"text": s, "ids": ids, "decoded": dec}
        if ids_ns != ids:
            item["ids_no_special"] = ids_ns
        enc.append(item)

    # Decode-only cases: arbitrary ids, many of them single bytes that split UTF-8 characters.
    vocab = hf.get_vocab()
    byte_ids = []
    for ch, i in vocab.items():
        if len(ch) == 1:
            byte_ids.append(i)
    byte_ids.sort()
    dec_cases = [[], [151645], [151644, 872, 198], [99, 100, 151643, 101]]
    for n in range(1, 6):  # the bytes of one 4-byte character, cut short
        dec_cases.append(hf.encode("\U0001F600", add_special_tokens=False).ids[:n])
    for _ in range(120):
        n = rng.randint(1, 12)
        seq = []
        for _ in range(n):
            r = rng.random()
            if r < 0.6:
                seq.append(rng.choice(byte_ids))
            elif r < 0.95:
                seq.append(rng.randint(0, 151642))
            else:
                seq.append(rng.randint(151643, 151668))
        dec_cases.append(seq)
    dec = [{"ids": ids, "text": hf.decode(ids, skip_special_tokens=False)} for ids in dec_cases]

    # Raw byte strings that are not valid UTF-8 (only C callers can pass them): the expected
    # decode of their encoding is Python's errors="replace" decoding, which follows the same
    # maximal-subpart rule as Rust's from_utf8_lossy.
    bad = [b"\xff", b"abc\xfe\xffdef", b"\xe4\xb8", b"\xe4\xb8 x", b"\xf0\x9f\x98", b"\xc0\xaf",
           b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x80\x80\x80", b"caf\xc3", b"\xe0\x80\xaf",
           b"ok \xf0\x9f\x98\x80 \xf0\x9f ok", b"\xc3\xa9\xcc", b"<|im_end|>\xff<think>"]
    invalid = [{"hex": b.hex(), "lossy": b.decode("utf-8", errors="replace")} for b in bad]

    doc = {
        "about": "Reference ids from Hugging Face tokenizers %s (checked against transformers %s "
                 "AutoTokenizer) for tests/data/qwen3-tokenizer/tokenizer.json; generated by "
                 "tools/make_tokenizer_refs.py. ids: encode(text, add_special_tokens=False); "
                 "ids_no_special (only where different): the same with encode_special_tokens=True; "
                 "decoded/text: decode(ids, skip_special_tokens=False)."
                 % (tokenizers.__version__, transformers.__version__),
        "encode": enc,
        "decode": dec,
        "invalid_utf8": invalid,
    }
    with open(OUT, "w", encoding="utf-8") as f:
        # One case per line: readable diffs when the reference is regenerated.
        f.write("{\n\"about\": %s,\n" % json.dumps(doc["about"]))
        for key in ("encode", "decode", "invalid_utf8"):
            f.write("\"%s\": [\n" % key)
            f.write(",\n".join(json.dumps(c, ensure_ascii=True) for c in doc[key]))
            f.write("\n]%s\n" % ("," if key != "invalid_utf8" else ""))
        f.write("}\n")
    print("wrote %s: %d encode cases (%d with special-token text), %d decode cases"
          % (OUT, len(enc), sum(1 for e in enc if "ids_no_special" in e), len(dec)))


def flags_tokenizer():
    """A small tokenizer of the same kind (Qwen's pipeline, the first 400 usable Qwen merges over
    the 256 byte tokens) whose added tokens use the flags Qwen's file leaves off: lstrip, rstrip,
    single_word and normalized. Writes it with HF's reference ids for strings around them."""
    src = json.load(open(os.path.join(TOK_DIR, "tokenizer.json"), encoding="utf-8"))
    vocab = {k: v for k, v in src["model"]["vocab"].items() if len(k) == 1}
    merges = []
    for a, b in src["model"]["merges"]:
        if a in vocab and b in vocab and a + b in src["model"]["vocab"] and a + b not in vocab:
            merges.append([a, b])
            vocab[a + b] = src["model"]["vocab"][a + b]
            if len(merges) == 400:
                break
    # Renumber densely: byte tokens and merges keep their relative order.
    ids = {k: i for i, k in enumerate(sorted(vocab, key=lambda k: vocab[k]))}
    n = len(ids)
    def tok(i, content, special=False, normalized=False, lstrip=False, rstrip=False, single_word=False):
        return {"id": n + i, "content": content, "single_word": single_word, "lstrip": lstrip, "rstrip": rstrip,
                "normalized": normalized, "special": special}
    added = [tok(0, "<|im_end|>", special=True), tok(1, "<think>", lstrip=True, rstrip=True),
             tok(2, "<b>", lstrip=True), tok(3, "</b>", rstrip=True), tok(4, "[MASK]", special=True, single_word=True),
             tok(5, "caf\u00e9", normalized=True), tok(6, "<sw>", single_word=True, rstrip=True)]
    doc = dict(src)
    doc["added_tokens"] = added
    doc["model"] = dict(src["model"], vocab=ids, merges=merges)
    os.makedirs(FLAGS_DIR, exist_ok=True)
    path = os.path.join(FLAGS_DIR, "tokenizer.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False)
    hf = Tokenizer.from_file(path)
    hf_ns = Tokenizer.from_file(path)
    hf_ns.encode_special_tokens = True
    texts = ["a <think> b", "a<think>b", "a \t\n <think> \n\t b", "  <think>  ", "x <b> y </b> z", "x<b>y</b>z",
             "x  <b>  y  </b>  z", "[MASK]", "a [MASK] b", "a[MASK]b", "_[MASK]_", "é[MASK]", "1[MASK]", "[MASK][MASK]",
             "a\u3000[MASK]\u3000b", "caf\u00e9", "cafe\u0301", "the cafe\u0301 is open", "CAFÉ café", "cafe",
             "<sw> x", "x<sw>", "x <sw>  y", "<sw><sw>", "é<sw>", "<|im_end|> [MASK] <think> </b> <b>",
             "caf<think>e\u0301", "\u00a0<think>\u00a0", "<b>\u2003"]
    cases = []
    for t in texts:
        c = {"text": t, "ids": hf.encode(t, add_special_tokens=False).ids}
        ns = hf_ns.encode(t, add_special_tokens=False).ids
        if ns != c["ids"]:
            c["ids_no_special"] = ns
        c["decoded"] = hf.decode(c["ids"], skip_special_tokens=False)
        cases.append(c)
    with open(os.path.join(FLAGS_DIR, "refs.json"), "w", encoding="utf-8") as f:
        f.write("[\n" + ",\n".join(json.dumps(c, ensure_ascii=True) for c in cases) + "\n]\n")
    print("wrote %s: %d merges, %d cases" % (FLAGS_DIR, len(merges), len(cases)))


if __name__ == "__main__":
    main()
    flags_tokenizer()
