#!/usr/bin/env python3
"""Build the training corpus and the byte-level BPE tokenizer for qnext-tiny.

Text sources (both public domain, both shipped by Debian 12 packages):
  * Jane Austen's six novels, from `r-cran-janeaustenr` (read through Rscript).
    The novels are public domain (Project Gutenberg transcriptions); the R package is MIT.
  * The King James Bible (1611, public domain), from `bible-kjv-text` (read through
    the `bible` program of package `bible-kjv`).
  * Herman Melville's Moby Dick (1851, public domain; Project Gutenberg EBook #2701), the `mobydick`
    data set of `r-cran-tokenizers` (package MIT). Only the text between the Gutenberg START/END
    markers is used.

Install them first:
  apt-get install --no-install-recommends r-base-core r-cran-janeaustenr r-cran-tokenizers bible-kjv

Outputs:
  models/qnext-tiny/tokenizer.json, tokenizer_config.json  (committed)
  data/tiny/{train,val}.npy  uint16 token ids, documents joined by <|endoftext|>  (git-ignored)
  data/tiny/meta.json  sizes and provenance
The validation split is the last VAL_FRAC of the paragraphs of every document (never seen by
the tokenizer trainer nor the model).
"""
import argparse
import json
import os
import re
import subprocess

import numpy as np
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QWEN_TOK_DIR = os.path.join(os.path.dirname(ROOT), "shared", "qwen3-next-tokenizer")
VAL_FRAC = 0.03
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>", "<tool_call>", "</tool_call>"]
# Qwen marks the first three as special (skipped when decoding with skip_special_tokens); the
# think/tool_call markers are ordinary added tokens there, and so here.
SPECIAL_FLAG = {"<|endoftext|>": True, "<|im_start|>": True, "<|im_end|>": True}
QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
              r"|\s*[\r\n]+|\s+(?!\S)|\s+")

R_SCRIPT = r"""
library(janeaustenr)
b <- austen_books()
for (name in levels(b$book)) {
  cat("\001BOOK ", name, "\n", sep="")
  cat(b$text[b$book == name], sep="\n")
  cat("\n")
}
"""


def austen_documents():
    out = subprocess.run(["Rscript", "-e", R_SCRIPT], check=True, capture_output=True, text=True).stdout
    docs = []
    for part in out.split("\001BOOK ")[1:]:
        name, _, body = part.partition("\n")
        paras = []
        for block in re.split(r"\n\s*\n", body):
            lines = [ln.strip() for ln in block.split("\n") if ln.strip()]
            if not lines:
                continue
            text = " ".join(lines)
            text = text.replace("_", "")  # Gutenberg marks italics with underscores
            text = re.sub(r"  +", " ", text)
            paras.append(text)
        docs.append(("austen:" + name, paras))
    return docs


def paragraphs(body):
    paras = []
    for block in re.split(r"\n\s*\n", body):
        lines = [ln.strip() for ln in block.split("\n") if ln.strip()]
        if not lines:
            continue
        text = " ".join(lines).replace("_", "")  # Gutenberg marks italics with underscores
        paras.append(re.sub(r"  +", " ", text))
    return paras


def moby_documents():
    out = subprocess.run(["Rscript", "-e", "library(tokenizers); data(mobydick); cat(mobydick)"], check=True,
                         capture_output=True, text=True).stdout
    start = out.index("\n", out.index("*** START OF THIS PROJECT GUTENBERG EBOOK"))
    end = out.index("*** END OF THIS PROJECT GUTENBERG EBOOK")
    paras = paragraphs(out[start:end])
    if paras and paras[0].startswith("Produced by"):
        paras = paras[1:]
    return [("melville:Moby Dick", paras)]


def kjv_documents():
    out = subprocess.run(["bible", "-l100000", "gen1:1-rev22:21"], check=True, capture_output=True,
                         text=True).stdout
    # Output: "Book N" heading lines, then "  V text" verse lines (one line each with a huge -l).
    books = []
    cur_book, paras, verses = None, [], []

    def flush_chapter():
        if verses:
            paras.append(" ".join(verses))
            verses.clear()

    for line in out.split("\n"):
        if not line.strip():
            continue
        m = re.match(r"^\s+(\d+)\s+(.*)$", line)
        if m:
            verses.append(m.group(2).strip())
            continue
        flush_chapter()
        book = line.strip().rsplit(" ", 1)[0]
        if book != cur_book:
            if cur_book is not None:
                books.append(("kjv:" + cur_book, paras))
            cur_book, paras = book, []
        paras.append(line.strip())  # chapter heading, e.g. "Genesis 1"
    flush_chapter()
    books.append(("kjv:" + cur_book, paras))
    return books


def split_docs(docs):
    train, val = [], []
    for name, paras in docs:
        n_val = max(1, int(round(len(paras) * VAL_FRAC)))
        train.append((name, "\n\n".join(paras[:-n_val])))
        val.append((name, "\n\n".join(paras[-n_val:])))
    return train, val


def build_tokenizer(train_texts, vocab_size):
    tok = Tokenizer(models.BPE(dropout=None, unk_token=None, continuing_subword_prefix="", end_of_word_suffix="",
                               fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tok.post_processor = None
    n_bpe = vocab_size - len(SPECIALS)
    trainer = trainers.BpeTrainer(vocab_size=n_bpe, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tok.train_from_iterator(train_texts, trainer=trainer)
    assert tok.get_vocab_size() == n_bpe, tok.get_vocab_size()
    from tokenizers import AddedToken
    for s in SPECIALS:
        at = AddedToken(s, single_word=False, lstrip=False, rstrip=False, normalized=False, special=SPECIAL_FLAG.get(s, False))
        if SPECIAL_FLAG.get(s, False):
            tok.add_special_tokens([at])
        else:
            tok.add_tokens([at])
    assert tok.get_vocab_size() == vocab_size
    return tok


def write_tokenizer(tok, out_dir):
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "tokenizer.json")
    tok.save(path)
    # The Python constructors do not expose every field (the ByteLevel decoder is saved with
    # its defaults), so copy the pipeline pieces verbatim from Qwen's file and reload.
    mine = json.load(open(path))
    qwen = json.load(open(os.path.join(QWEN_TOK_DIR, "tokenizer.json")))
    for key in ("normalizer", "pre_tokenizer", "decoder", "post_processor"):
        mine[key] = qwen[key]
    with open(path, "w") as f:
        json.dump(mine, f, ensure_ascii=False, indent=1)
        f.write("\n")
    reloaded = Tokenizer.from_file(path)
    sample = "Mr. Darcy's letter, dated 12 May 1811:\n\n  \"It's done.\" <|im_start|>user\n<think>x</think><|im_end|>"
    assert reloaded.decode(reloaded.encode(sample).ids, skip_special_tokens=False) == sample
    assert reloaded.encode(sample).ids == tok.encode(sample).ids
    qcfg = json.load(open(os.path.join(QWEN_TOK_DIR, "tokenizer_config.instruct.json")))
    added = {}
    for s in SPECIALS:
        added[str(tok.token_to_id(s))] = {"content": s, "lstrip": False, "normalized": False, "rstrip": False,
                                          "single_word": False, "special": SPECIAL_FLAG.get(s, False)}
    cfg = {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": added,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": None,
        "chat_template": qcfg["chat_template"],
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 2048,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump(cfg, f, indent=2, ensure_ascii=False)
        f.write("\n")


def encode_split(tok, docs):
    eot = tok.token_to_id("<|endoftext|>")
    ids = []
    for _, text in docs:
        ids.extend(tok.encode(text).ids)
        ids.append(eot)
    arr = np.asarray(ids, dtype=np.uint16)
    assert int(arr.max()) < tok.get_vocab_size()
    return arr


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--model-dir", default=os.path.join(ROOT, "models", "qnext-tiny"))
    ap.add_argument("--data-dir", default=os.path.join(ROOT, "data", "tiny"))
    args = ap.parse_args()

    docs = austen_documents() + moby_documents() + kjv_documents()
    train, val = split_docs(docs)
    tok = build_tokenizer([t for _, t in train], args.vocab)
    write_tokenizer(tok, args.model_dir)
    os.makedirs(args.data_dir, exist_ok=True)
    # Austen first in the validation file: the fixed reference sequence is taken from its start.
    tr, va = encode_split(tok, train), encode_split(tok, val)
    np.save(os.path.join(args.data_dir, "train.npy"), tr)
    np.save(os.path.join(args.data_dir, "val.npy"), va)
    meta = {
        "sources": {
            "austen": "Debian package r-cran-janeaustenr 1.0.0-1 (Jane Austen's six novels; public domain text, package MIT)",
            "kjv": "Debian package bible-kjv-text 4.38 via bible-kjv (King James Version, 1611; public domain)",
            "melville": "Debian package r-cran-tokenizers 0.3.0-1, data set mobydick (Moby Dick, 1851, Project "
                        "Gutenberg EBook #2701; public domain text, package MIT)",
        },
        "val_frac_per_document": VAL_FRAC,
        "documents": [name for name, _ in docs],
        "train_chars": sum(len(t) for _, t in train), "val_chars": sum(len(t) for _, t in val),
        "train_tokens": int(tr.size), "val_tokens": int(va.size),
        "austen_val_tokens": int(encode_split(tok, [d for d in val if d[0].startswith("austen:")]).size),
        "vocab_size": tok.get_vocab_size(),
    }
    with open(os.path.join(args.data_dir, "meta.json"), "w") as f:
        json.dump(meta, f, indent=2)
    print(json.dumps(meta, indent=2))


if __name__ == "__main__":
    main()
