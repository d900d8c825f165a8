#!/usr/bin/env python3
"""Builds tests/data/tok512/: a byte-level BPE tokenizer with exactly 512 ids, in the Qwen3
format (NFC normalizer, Qwen's Split regex, ByteLevel), so that the random fixture models
(vocab 512) become full model directories for end-to-end tests of `qnext run` / `qnext chat`.

Ids 0..504 are the 256 byte symbols and 249 merges learned from a small fixed corpus (the
docstrings of some Python standard modules); ids 505..511 are the chat tokens:
  505 <tool_call>  506 </tool_call>  507 <think>  508 </think>   (not special, as in Qwen3)
  509 <|im_start|> 510 <|endoftext|> 511 <|im_end|>              (special)
511 is the fixtures' eos_token_id (config.json), 510 their bos_token_id.
tokenizer_config.json carries the Qwen3-Next Instruct chat template from
tests/data/qwen3-tokenizer/tokenizer_config.instruct.json.

Usage: python3 tools/make_tok512.py   (writes tests/data/tok512/)
"""
import json
import os
import sys

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "data", "tok512")
QWEN = os.path.join(ROOT, "tests", "data", "qwen3-tokenizer")
CHAT_TOKENS = [("<tool_call>", False), ("</tool_call>", False), ("<think>", False), ("</think>", False),
               ("<|im_start|>", True), ("<|endoftext|>", True), ("<|im_end|>", True)]
VOCAB = 512


def corpus():
    import argparse, collections, json as j, string, textwrap, random, re as r, os as o  # noqa: E401
    texts = []
    for mod in (argparse, collections, j, string, textwrap, random, r, o):
        for name in sorted(dir(mod)):
            doc = getattr(getattr(mod, name), "__doc__", None)
            if isinstance(doc, str) and len(doc) > 40:
                texts.append(doc)
    texts.append("Hello! How are you today? I am fine, thank you. What is the capital of France? Paris.")
    return texts


def main():
    qwen_tok = json.load(open(os.path.join(QWEN, "tokenizer.json")))
    tok = Tokenizer(models.BPE(unk_token=None, continuing_subword_prefix="", end_of_word_suffix="",
                               fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    split = qwen_tok["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"]
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(split), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    n_bpe = VOCAB - len(CHAT_TOKENS)
    trainer = trainers.BpeTrainer(vocab_size=n_bpe, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tok.train_from_iterator(corpus(), trainer=trainer)
    assert tok.get_vocab_size() == n_bpe, tok.get_vocab_size()
    for content, special in CHAT_TOKENS:
        at = AddedToken(content, single_word=False, lstrip=False, rstrip=False, normalized=False, special=special)
        (tok.add_special_tokens if special else tok.add_tokens)([at])
    assert tok.get_vocab_size() == VOCAB
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, "tokenizer.json")
    tok.save(path)
    # Take the pipeline pieces verbatim from Qwen's file (the Python constructors do not set
    # every field the same way), then check that the file still loads and round-trips.
    mine = json.load(open(path))
    for key in ("normalizer", "pre_tokenizer", "decoder", "post_processor"):
        mine[key] = qwen_tok[key]
    with open(path, "w") as f:
        json.dump(mine, f, ensure_ascii=False, indent=1)
        f.write("\n")
    re_tok = Tokenizer.from_file(path)
    sample = "Hello, world! <|im_start|>user\n<think>x</think> caf\u00e9 42<|im_end|>"
    assert re_tok.decode(re_tok.encode(sample).ids, skip_special_tokens=False) == sample
    ids = {c: re_tok.token_to_id(c) for c, _ in CHAT_TOKENS}
    assert ids["<|im_end|>"] == 511 and ids["<|endoftext|>"] == 510, ids
    qcfg = json.load(open(os.path.join(QWEN, "tokenizer_config.instruct.json")))
    cfg = {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": {str(ids[c]): {"content": c, "lstrip": False, "normalized": False, "rstrip": False,
                                               "single_word": False, "special": s} for c, s in CHAT_TOKENS},
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": None,
        "chat_template": qcfg["chat_template"],
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 1024,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }
    with open(os.path.join(OUT, "tokenizer_config.json"), "w") as f:
        json.dump(cfg, f, ensure_ascii=False, indent=2)
        f.write("\n")
    print("wrote", OUT, file=sys.stderr)


if __name__ == "__main__":
    main()
