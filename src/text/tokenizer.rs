//! The WordPiece tokenizer of BERT models, read from a Hugging Face `tokenizer.json`.
//!
//! A text becomes token ids in four steps, each as the Hugging Face `tokenizers` library does
//! them for a BERT tokenizer, so the ids match it exactly:
//! 1. special tokens written in the text (`[MASK]`, `[SEP]`, ... — the `added_tokens` that are
//!    not normalized) are matched verbatim, longest first, and kept whole;
//! 2. the rest is normalized: control characters dropped and whitespace made a space, CJK
//!    ideographs surrounded by spaces, accents stripped (NFD, then non-spacing marks dropped)
//!    and letters lower-cased, as the `BertNormalizer` options say;
//! 3. it is split on whitespace and around every punctuation character;
//! 4. each word becomes the longest vocabulary pieces from its start (`##` marks a piece that
//!    continues a word); a word with a piece not in the vocabulary, or longer than
//!    `max_input_chars_per_word`, becomes `[UNK]`.
//!
//! The ids are then wrapped in `[CLS] ... [SEP]` and cut to the model's maximum length.
//!
//! The character classes (what counts as punctuation, control or a non-spacing mark) are those
//! the reference library uses, measured on every code point (`unicode_tables`).

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value;
use unicode_normalization::UnicodeNormalization;

use super::unicode_tables::{NONSPACING_MARK, PUNCTUATION, REMOVED};
use crate::error::{Error, Result};

/// A BERT WordPiece tokenizer.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    vocab: HashMap<String, u32>,
    unk: u32,
    cls: u32,
    sep: u32,
    pad: u32,
    prefix: String,
    max_chars_per_word: usize,
    clean_text: bool,
    chinese_chars: bool,
    strip_accents: bool,
    lowercase: bool,
    /// Special tokens matched verbatim in the raw text: (content, id), longest first.
    special: Vec<(String, u32)>,
    max_length: usize,
}

fn in_table(table: &[(u32, u32)], c: char) -> bool {
    let c = c as u32;
    table
        .binary_search_by(|&(lo, hi)| {
            if hi < c {
                std::cmp::Ordering::Less
            } else if lo > c {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        })
        .is_ok()
}

/// Whether the pre-tokenizer splits `c` off as a token of its own.
pub fn is_punctuation(c: char) -> bool {
    in_table(PUNCTUATION, c)
}

/// Whether text cleaning drops `c` (control and format characters, private use, U+FFFD).
pub fn is_removed(c: char) -> bool {
    in_table(REMOVED, c)
}

/// Whether accent stripping drops `c` (a non-spacing mark).
pub fn is_nonspacing_mark(c: char) -> bool {
    in_table(NONSPACING_MARK, c)
}

/// Whether `c` is a CJK ideograph, which the normalizer surrounds with spaces.
pub fn is_chinese_char(c: char) -> bool {
    matches!(c as u32,
        0x4E00..=0x9FFF | 0x3400..=0x4DBF | 0x20000..=0x2A6DF | 0x2A700..=0x2B73F
        | 0x2B740..=0x2B81F | 0x2B920..=0x2CEAF | 0xF900..=0xFAFF | 0x2F800..=0x2FA1F)
}

fn is_whitespace(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r') || c.is_whitespace()
}

impl Tokenizer {
    /// Reads `tokenizer.json`; any problem is one error naming the file and what is wrong.
    pub fn from_file(path: &Path) -> Result<Tokenizer> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Tokenizer::from_json(&text, &path.display().to_string())
    }

    /// Parses the contents of a `tokenizer.json`; `source` names it in errors.
    pub fn from_json(text: &str, source: &str) -> Result<Tokenizer> {
        let bad = |message: String| Error::Format { path: source.to_string(), message };
        let json: Value = serde_json::from_str(text).map_err(|e| bad(format!("not valid JSON ({e})")))?;
        let model = json.get("model").ok_or_else(|| bad("no `model` entry".into()))?;
        let kind = model.get("type").and_then(Value::as_str).unwrap_or("");
        if kind != "WordPiece" {
            return Err(bad(format!("the tokenizer model is `{kind}`; vlsa reads WordPiece (BERT) tokenizers")));
        }
        let vocab_json = model
            .get("vocab")
            .and_then(Value::as_object)
            .ok_or_else(|| bad("the WordPiece model has no `vocab` object".into()))?;
        let mut vocab = HashMap::with_capacity(vocab_json.len());
        for (piece, id) in vocab_json {
            let id = id
                .as_u64()
                .filter(|&i| i <= u32::MAX as u64)
                .ok_or_else(|| bad(format!("vocabulary entry {piece:?} has no valid id")))?;
            vocab.insert(piece.clone(), id as u32);
        }
        let lookup =
            |name: &str| vocab.get(name).copied().ok_or_else(|| bad(format!("the vocabulary has no {name} token")));
        let unk_name = model.get("unk_token").and_then(Value::as_str).unwrap_or("[UNK]");
        let unk = lookup(unk_name)?;
        let (cls, sep) = (lookup("[CLS]")?, lookup("[SEP]")?);
        let pad = vocab.get("[PAD]").copied().unwrap_or(0);
        let prefix = model.get("continuing_subword_prefix").and_then(Value::as_str).unwrap_or("##").to_string();
        let max_chars_per_word = model.get("max_input_chars_per_word").and_then(Value::as_u64).unwrap_or(100) as usize;

        let normalizer = json
            .get("normalizer")
            .filter(|v| !v.is_null())
            .ok_or_else(|| bad("no `normalizer`; vlsa reads BERT tokenizers (BertNormalizer)".into()))?;
        let ntype = normalizer.get("type").and_then(Value::as_str).unwrap_or("");
        if ntype != "BertNormalizer" {
            return Err(bad(format!("the normalizer is `{ntype}`; vlsa reads BertNormalizer")));
        }
        let flag = |key: &str, default: bool| normalizer.get(key).and_then(Value::as_bool).unwrap_or(default);
        let lowercase = flag("lowercase", true);
        let strip_accents = normalizer.get("strip_accents").and_then(Value::as_bool).unwrap_or(lowercase);
        let ptype = json.get("pre_tokenizer").and_then(|p| p.get("type")).and_then(Value::as_str).unwrap_or("");
        if ptype != "BertPreTokenizer" {
            return Err(bad(format!("the pre-tokenizer is `{ptype}`; vlsa reads BertPreTokenizer")));
        }

        let mut special = Vec::new();
        for token in json.get("added_tokens").and_then(Value::as_array).into_iter().flatten() {
            let normalized = token.get("normalized").and_then(Value::as_bool).unwrap_or(true);
            if let (Some(content), Some(id), false) =
                (token.get("content").and_then(Value::as_str), token.get("id").and_then(Value::as_u64), normalized)
            {
                if !content.is_empty() {
                    special.push((content.to_string(), id as u32));
                }
            }
        }
        special.sort_by_key(|(content, _)| std::cmp::Reverse(content.len()));
        let max_length =
            json.get("truncation").and_then(|t| t.get("max_length")).and_then(Value::as_u64).unwrap_or(512) as usize;
        let mut tokenizer = Tokenizer {
            vocab,
            unk,
            cls,
            sep,
            pad,
            prefix,
            max_chars_per_word,
            clean_text: flag("clean_text", true),
            chinese_chars: flag("handle_chinese_chars", true),
            strip_accents,
            lowercase,
            special,
            max_length: 0,
        };
        tokenizer.set_max_length(max_length).map_err(|e| bad(e.to_string()))?;
        Ok(tokenizer)
    }

    /// Most ids [`Tokenizer::encode`] returns, `[CLS]` and `[SEP]` included.
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// Sets the most ids per text (at least 2, for `[CLS]` and `[SEP]`).
    pub fn set_max_length(&mut self, max_length: usize) -> Result<()> {
        if max_length < 2 {
            return Err(Error::Invalid(format!(
                "a maximum length of {max_length} tokens leaves no room for [CLS] and [SEP]"
            )));
        }
        self.max_length = max_length;
        Ok(())
    }

    /// Id of the padding token.
    pub fn pad_id(&self) -> u32 {
        self.pad
    }

    /// Number of entries in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.vocab.len()
    }

    /// The ids of `text`: `[CLS]`, its word pieces (cut to fit), `[SEP]`.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut ids = vec![self.cls];
        ids.extend(self.pieces(text));
        ids.truncate(self.max_length - 1);
        ids.push(self.sep);
        ids
    }

    /// The word-piece ids of `text`, without `[CLS]`/`[SEP]` and without truncation.
    pub fn pieces(&self, text: &str) -> Vec<u32> {
        let mut ids = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            // The next special token written in the text, earliest first and longest there.
            let next = rest.char_indices().find_map(|(at, _)| {
                self.special.iter().find(|(s, _)| rest[at..].starts_with(s.as_str())).map(|(s, id)| (at, s.len(), *id))
            });
            let (plain, special) = match next {
                Some((at, len, id)) => (&rest[..at], Some((len, id, at))),
                None => (rest, None),
            };
            self.plain_pieces(plain, &mut ids);
            match special {
                Some((len, id, at)) => {
                    ids.push(id);
                    rest = &rest[at + len..];
                }
                None => break,
            }
        }
        ids
    }

    fn normalize(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        for c in text.chars() {
            if self.clean_text && (c == '\0' || c == '\u{FFFD}' || is_removed(c)) {
                continue;
            }
            let c = if self.clean_text && is_whitespace(c) { ' ' } else { c };
            if self.chinese_chars && is_chinese_char(c) {
                out.push(' ');
                out.push(c);
                out.push(' ');
            } else {
                out.push(c);
            }
        }
        if self.strip_accents {
            out = out.nfd().filter(|&c| !is_nonspacing_mark(c)).collect();
        }
        if self.lowercase {
            out = out.chars().flat_map(char::to_lowercase).collect();
        }
        out
    }

    fn plain_pieces(&self, text: &str, ids: &mut Vec<u32>) {
        let normalized = self.normalize(text);
        let mut word = String::new();
        for c in normalized.chars() {
            if c.is_whitespace() || is_punctuation(c) {
                if !word.is_empty() {
                    self.word_pieces(&word, ids);
                    word.clear();
                }
                if !c.is_whitespace() {
                    self.word_pieces(c.encode_utf8(&mut [0; 4]), ids);
                }
            } else {
                word.push(c);
            }
        }
        if !word.is_empty() {
            self.word_pieces(&word, ids);
        }
    }

    /// Greedy longest-match-first WordPiece of one word.
    fn word_pieces(&self, word: &str, ids: &mut Vec<u32>) {
        if word.chars().count() > self.max_chars_per_word {
            ids.push(self.unk);
            return;
        }
        let mut found = Vec::new();
        let mut start = 0;
        let mut candidate = String::new();
        while start < word.len() {
            let mut end = word.len();
            let mut piece = None;
            while end > start {
                candidate.clear();
                if start > 0 {
                    candidate.push_str(&self.prefix);
                }
                candidate.push_str(&word[start..end]);
                if let Some(&id) = self.vocab.get(&candidate) {
                    piece = Some(id);
                    break;
                }
                // Step back one character, not one byte.
                end = word[..end].char_indices().next_back().map_or(start, |(i, _)| i);
            }
            match piece {
                Some(id) => {
                    found.push(id);
                    start = end;
                }
                None => {
                    ids.push(self.unk);
                    return;
                }
            }
        }
        ids.extend(found);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny BERT tokenizer.json: the vocabulary is its list of pieces, ids in order.
    fn tokenizer(pieces: &[&str]) -> Tokenizer {
        let vocab: serde_json::Map<String, Value> =
            pieces.iter().enumerate().map(|(i, p)| (p.to_string(), Value::from(i))).collect();
        let json = serde_json::json!({
            "truncation": {"max_length": 8},
            "added_tokens": [
                {"id": 0, "content": "[PAD]", "normalized": false},
                {"id": 1, "content": "[UNK]", "normalized": false},
                {"id": 2, "content": "[CLS]", "normalized": false},
                {"id": 3, "content": "[SEP]", "normalized": false},
                {"id": 4, "content": "[MASK]", "normalized": false}
            ],
            "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true, "strip_accents": null, "lowercase": true},
            "pre_tokenizer": {"type": "BertPreTokenizer"},
            "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##", "max_input_chars_per_word": 10, "vocab": vocab}
        });
        Tokenizer::from_json(&json.to_string(), "test").unwrap()
    }

    const PIECES: &[&str] = &[
        "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "optic", "disc", "##s", "cafe", "un", "##aff", "##able", "a",
        ",", "!", "肝", "-", "’", "##ffable", "€", "ab",
    ];

    fn ids(pieces: &[&str]) -> Vec<u32> {
        pieces.iter().map(|p| PIECES.iter().position(|q| q == p).unwrap() as u32).collect()
    }

    #[test]
    fn lower_cases_strips_accents_and_splits_punctuation() {
        let t = tokenizer(PIECES);
        assert_eq!(t.pieces("Optic DISCS, Café!"), ids(&["optic", "disc", "##s", ",", "cafe", "!"]));
        // Decomposed accents are stripped too; the curly apostrophe is punctuation.
        assert_eq!(t.pieces("cafe\u{301}’a"), ids(&["cafe", "’", "a"]));
        assert_eq!(t.pieces("a-a"), ids(&["a", "-", "a"]));
    }

    #[test]
    fn word_pieces_are_greedy_longest_first() {
        let t = tokenizer(PIECES);
        // The longest piece at each position wins, from the start of the word.
        assert_eq!(t.pieces("unaffable"), ids(&["un", "##aff", "##able"]));
        // One unknown piece makes the whole word [UNK], not a partial split.
        assert_eq!(t.pieces("unaffablez optic"), ids(&["[UNK]", "optic"]));
        // Longer than max_input_chars_per_word (10) is [UNK] even when it would split.
        assert_eq!(t.pieces("discsdiscsdiscs"), ids(&["[UNK]"]));
        assert_eq!(t.pieces("discs"), ids(&["disc", "##s"]));
    }

    #[test]
    fn cleans_control_characters_and_isolates_cjk() {
        let t = tokenizer(PIECES);
        // NUL, soft hyphen, zero-width space/joiner and BOM vanish (joining "a" and "b" into
        // "ab"); tabs and newlines are spaces.
        assert_eq!(t.pieces("a\u{0}\u{ad}\u{200b}\u{200d}\u{feff}b\ta\n"), ids(&["ab", "a"]));
        assert_eq!(t.pieces("a肝a"), ids(&["a", "肝", "a"]));
        assert_eq!(t.pieces(""), Vec::<u32>::new());
        assert_eq!(t.pieces(" \t\n "), Vec::<u32>::new());
        // An emoji is a letter-like symbol: part of the word, which is then unknown.
        assert_eq!(t.pieces("a😀 €"), ids(&["[UNK]", "€"]));
    }

    #[test]
    fn special_tokens_in_the_text_are_kept_verbatim() {
        let t = tokenizer(PIECES);
        assert_eq!(t.pieces("a [MASK]optic"), ids(&["a", "[MASK]", "optic"]));
        // Only the exact spelling: lower case is ordinary text, split at the brackets.
        assert_eq!(t.pieces("[mask]"), ids(&["[UNK]", "[UNK]", "[UNK]"]));
        assert_eq!(t.encode("[SEP]"), ids(&["[CLS]", "[SEP]", "[SEP]"]));
    }

    #[test]
    fn wraps_and_truncates_to_the_maximum_length() {
        let mut t = tokenizer(PIECES);
        assert_eq!(t.max_length(), 8, "read from truncation.max_length");
        assert_eq!(t.encode(""), ids(&["[CLS]", "[SEP]"]));
        let long = t.encode("a a a a a a a a a a");
        assert_eq!(long, ids(&["[CLS]", "a", "a", "a", "a", "a", "a", "[SEP]"]));
        t.set_max_length(3).unwrap();
        assert_eq!(t.encode("optic disc"), ids(&["[CLS]", "optic", "[SEP]"]));
        assert!(t.set_max_length(1).is_err());
    }

    #[test]
    fn character_classes_follow_the_reference_tables() {
        for c in ['!', '-', '’', '«', '、', '。', '$', '^', '`', '~'] {
            assert!(is_punctuation(c), "{c:?} is punctuation");
        }
        // U+2E4F (Unicode 11) is punctuation today but not in the reference's tables.
        for c in ['a', '€', '😀', ' ', '\u{2E4F}'] {
            assert!(!is_punctuation(c), "{c:?} is not punctuation");
        }
        assert!(is_nonspacing_mark('\u{301}') && !is_nonspacing_mark('e'));
        assert!(is_removed('\u{ad}') && is_removed('\u{e000}') && !is_removed('\u{378}') && !is_removed(' '));
    }

    #[test]
    fn bad_tokenizer_files_are_errors_naming_the_file() {
        for (text, needle) in [
            ("{", "not valid JSON"),
            (r#"{"model": {"type": "BPE"}}"#, "WordPiece"),
            (r#"{"model": {"type": "WordPiece"}}"#, "vocab"),
            (r#"{"model": {"type": "WordPiece", "vocab": {"[UNK]": 0}}}"#, "[CLS]"),
        ] {
            let e = Tokenizer::from_json(text, "tok.json").unwrap_err().to_string();
            assert!(e.starts_with("tok.json:") && e.contains(needle), "{e}");
        }
    }
}
