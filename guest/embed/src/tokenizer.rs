//! BERT's uncased WordPiece tokenizer, as all-MiniLM-L6-v2's `tokenizer.json` specifies it:
//! clean the text, put spaces around CJK characters, lowercase and strip accents, split on
//! whitespace and punctuation, then split each word into the longest vocabulary pieces
//! (continuations prefixed `##`), `[UNK]` for a word that cannot be split.

use unicode_general_category::{GeneralCategory, get_general_category};
use unicode_normalization::UnicodeNormalization;

include!(concat!(env!("OUT_DIR"), "/vocab.rs"));

/// Words longer than this (in characters) are `[UNK]`.
const MAX_WORD_CHARS: usize = 100;

fn id(token: &str) -> Option<u32> {
    VOCAB.binary_search_by(|(t, _)| t.cmp(&token)).ok().map(|i| VOCAB[i].1)
}

/// The id of a special token, which the vocabulary always has.
pub fn special(token: &str) -> u32 {
    id(token).expect("special tokens are in the vocabulary")
}

/// Token ids of `text`, without `[CLS]`/`[SEP]`.
pub fn tokenize(text: &str) -> Vec<u32> {
    let unknown = special("[UNK]");
    normalize(text)
        .split_whitespace()
        .flat_map(split_punctuation)
        .flat_map(|word| word_pieces(&word, unknown))
        .collect()
}

fn normalize(text: &str) -> String {
    let mut cleaned = String::with_capacity(text.len());
    for c in text.chars() {
        if c == '\0' || c == '\u{fffd}' || (c.is_control() && !c.is_whitespace()) {
            continue;
        }
        if is_cjk(c) {
            cleaned.extend([' ', c, ' ']);
        } else if c.is_whitespace() {
            cleaned.push(' ');
        } else {
            cleaned.push(c);
        }
    }
    cleaned
        .to_lowercase()
        .nfd()
        .filter(|&c| get_general_category(c) != GeneralCategory::NonspacingMark)
        .collect()
}

fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x4E00..=0x9FFF | 0x3400..=0x4DBF | 0x20000..=0x2A6DF | 0x2A700..=0x2B73F
        | 0x2B740..=0x2B81F | 0x2B820..=0x2CEAF | 0xF900..=0xFAFF | 0x2F800..=0x2FA1F)
}

fn is_punctuation(c: char) -> bool {
    c.is_ascii_punctuation()
        || matches!(
            get_general_category(c),
            GeneralCategory::ConnectorPunctuation
                | GeneralCategory::DashPunctuation
                | GeneralCategory::OpenPunctuation
                | GeneralCategory::ClosePunctuation
                | GeneralCategory::InitialPunctuation
                | GeneralCategory::FinalPunctuation
                | GeneralCategory::OtherPunctuation
        )
}

/// Splits a word so every punctuation character is a word of its own.
fn split_punctuation(word: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut current = String::new();
    for c in word.chars() {
        if is_punctuation(c) {
            if !current.is_empty() {
                words.push(std::mem::take(&mut current));
            }
            words.push(c.to_string());
        } else {
            current.push(c);
        }
    }
    if !current.is_empty() {
        words.push(current);
    }
    words
}

/// Greedy longest-match-first WordPiece.
fn word_pieces(word: &str, unknown: u32) -> Vec<u32> {
    let chars: Vec<char> = word.chars().collect();
    if chars.len() > MAX_WORD_CHARS {
        return vec![unknown];
    }
    let mut pieces = Vec::new();
    let mut start = 0;
    while start < chars.len() {
        let found = (start + 1..=chars.len()).rev().find_map(|end| {
            let piece: String = chars[start..end].iter().collect();
            let piece = if start > 0 { format!("##{piece}") } else { piece };
            id(&piece).map(|id| (id, end))
        });
        match found {
            Some((id, end)) => {
                pieces.push(id);
                start = end;
            }
            None => return vec![unknown],
        }
    }
    pieces
}
