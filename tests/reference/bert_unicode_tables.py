"""Writes src/text/unicode_tables.rs: the character classes of the Hugging Face BERT
normalizer and pre-tokenizer, measured by running them (the `tokenizers` package) on every
code point.

vlsa's tokenizer must split and clean text exactly as the reference does, and the reference's
Unicode tables are older than today's Unicode (it treats U+2E4F as a letter, not punctuation,
and keeps unassigned code points), so the classes are observed, not taken from a Unicode
database. Three classes, each a sorted list of inclusive code point ranges:

- REMOVED: dropped by the normalizer's text cleaning (control and format characters, private
  use, U+0000, U+FFFD);
- PUNCTUATION: split off as a token of its own by the pre-tokenizer;
- NONSPACING_MARK: dropped by accent stripping (after NFD).

    python tests/reference/bert_unicode_tables.py   # ~10 s; tokenizers==0.23.3 was used
"""

import os

import tokenizers
from tokenizers.normalizers import BertNormalizer
from tokenizers.pre_tokenizers import BertPreTokenizer


def ranges(points):
    out = []
    for p in points:
        if out and out[-1][1] + 1 == p:
            out[-1][1] = p
        else:
            out.append([p, p])
    return out


def main():
    clean = BertNormalizer(clean_text=True, handle_chinese_chars=False, strip_accents=False, lowercase=False)
    strip = BertNormalizer(clean_text=False, handle_chinese_chars=False, strip_accents=True, lowercase=False)
    pre = BertPreTokenizer()
    removed, punctuation, marks = [], [], []
    for cp in range(0x110000):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        c = chr(cp)
        if clean.normalize_str(c) == "":
            removed.append(cp)
        if strip.normalize_str(c) == "":
            marks.append(cp)
        if len(pre.pre_tokenize_str("a" + c + "a")) == 3:
            punctuation.append(cp)

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    path = os.path.join(root, "src", "text", "unicode_tables.rs")
    with open(path, "w") as f:
        f.write("//! Character classes of the BERT normalizer and pre-tokenizer as the Hugging Face\n")
        f.write(f"//! `tokenizers` package (version {tokenizers.__version__}) applies them, measured on every code point by\n")
        f.write("//! `tests/reference/bert_unicode_tables.py`, which wrote this file. Sorted inclusive ranges.\n\n")
        for name, doc, points in [
            ("REMOVED", "Dropped by text cleaning: control and format characters, private use, U+0000, U+FFFD.", removed),
            ("PUNCTUATION", "Split off as a token of its own.", punctuation),
            ("NONSPACING_MARK", "Dropped by accent stripping (after NFD).", marks),
        ]:
            rs = ranges(points)
            f.write(f"/// {doc}\n")
            f.write(f"pub(crate) const {name}: &[(u32, u32)] = &[\n")
            line = "   "
            for a, b in rs:
                item = f" (0x{a:X}, 0x{b:X}),"
                if len(line) + len(item) > 100:
                    f.write(line + "\n")
                    line = "   "
                line += item
            f.write(line + "\n];\n\n")
    print(f"wrote {path}: {len(ranges(removed))}, {len(ranges(punctuation))}, {len(ranges(marks))} ranges")


if __name__ == "__main__":
    main()
