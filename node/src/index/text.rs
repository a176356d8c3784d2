//! Full-text matching on keys with a `text` payload index, as Qdrant does it: the index's
//! tokenizer splits both the stored string and the query, and `match.text` asks for every query
//! token, `match.text_any` for one of them, `match.phrase` for all of them in a row.
//!
//! Keys without a `text` index keep Qdrant's unindexed semantics (a substring test, in
//! `filter`). A shard turns a filter's text conditions on indexed keys into [`TokenMatch`]es
//! before it checks any point ([`crate::index::filter::Filter::bind_text`]), so every segment
//! of the shard, and every kind of read and update by filter, agrees on what matches.
//!
//! Tokenizers (`tokenizer` in the index's `field_schema`):
//! - `word` (the default): runs of alphanumeric characters;
//! - `whitespace`: runs of non-whitespace characters;
//! - `prefix`: `word` tokens, each also indexed by its prefixes (a query token matches a stored
//!   token it begins); query tokens are not expanded;
//! - `multilingual`: Qdrant segments text with `charabia`; Shoal uses `word`, which agrees on
//!   space-separated scripts and not on scripts written without spaces (Chinese, Japanese, Thai).
//!
//! `lowercase` (default `true`) folds case on both sides; tokens shorter than `min_token_len` or
//! longer than `max_token_len` (in characters) are dropped on both sides. `stopwords`,
//! `stemmer`, `ascii_folding` and the `code` tokenizer are refused when the index is created
//! (400), not accepted and ignored.

use std::sync::Arc;

use serde_json::Value;

/// The tokenizer of a `text` index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tokenizer {
    Word,
    Whitespace,
    Prefix,
}

/// A `text` index's parameters, from its `field_schema`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextParams {
    pub tokenizer: Tokenizer,
    pub lowercase: bool,
    pub min_token_len: Option<usize>,
    pub max_token_len: Option<usize>,
    /// Whether `match.phrase` is answered by token positions (Qdrant needs this flag for it).
    pub phrase_matching: bool,
}

impl TextParams {
    /// From a `field_schema` object (`None`: the defaults).
    pub fn from_schema(params: Option<&Value>) -> TextParams {
        let get = |name: &str| params.and_then(|p| p.get(name));
        let len = |name: &str| get(name).and_then(Value::as_u64).map(|n| n as usize);
        TextParams {
            tokenizer: match get("tokenizer").and_then(Value::as_str) {
                Some("whitespace") => Tokenizer::Whitespace,
                Some("prefix") => Tokenizer::Prefix,
                _ => Tokenizer::Word,
            },
            lowercase: get("lowercase").and_then(Value::as_bool).unwrap_or(true),
            min_token_len: len("min_token_len"),
            max_token_len: len("max_token_len"),
            phrase_matching: get("phrase_matching")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        }
    }

    fn keeps(&self, token: &str) -> bool {
        let chars = token.chars().count();
        chars > 0
            && self.min_token_len.is_none_or(|min| chars >= min)
            && self.max_token_len.is_none_or(|max| chars <= max)
    }

    /// The words of `text` in order (repeats kept), case folded as configured.
    fn words(&self, text: &str) -> Vec<String> {
        let pieces: Box<dyn Iterator<Item = &str>> = match self.tokenizer {
            Tokenizer::Whitespace => Box::new(text.split_whitespace()),
            Tokenizer::Word | Tokenizer::Prefix => {
                Box::new(text.split(|c: char| !c.is_alphanumeric()))
            }
        };
        pieces
            .filter(|t| !t.is_empty())
            .map(|t| {
                if self.lowercase {
                    t.to_lowercase()
                } else {
                    t.to_owned()
                }
            })
            .collect()
    }

    /// The tokens of a stored string in order: words within the length bounds; for `prefix`,
    /// every word at least `min_token_len` long (a longer word still has its prefixes up to
    /// `max_token_len`, as in Qdrant).
    pub fn tokens(&self, text: &str) -> Vec<String> {
        let min = self.min_token_len.unwrap_or(1);
        self.words(text)
            .into_iter()
            .filter(|w| match self.tokenizer {
                Tokenizer::Prefix => w.chars().count() >= min,
                _ => self.keeps(w),
            })
            .collect()
    }

    /// The tokens of a query: as [`TextParams::tokens`], except that with `prefix` a word is
    /// cut to `max_token_len` characters (Qdrant's query side of the prefix tokenizer).
    pub fn query_tokens(&self, text: &str) -> Vec<String> {
        match self.tokenizer {
            Tokenizer::Prefix => self
                .words(text)
                .into_iter()
                .map(|w| match self.max_token_len {
                    Some(max) => w.chars().take(max).collect(),
                    None => w,
                })
                .filter(|w| self.keeps(w))
                .collect(),
            _ => self.tokens(text),
        }
    }

    /// What the index holds for a stored string: its tokens, or with `prefix` every prefix
    /// of each within the length bounds; deduplicated.
    pub fn indexed_tokens(&self, text: &str) -> Vec<String> {
        let mut out = Vec::new();
        for token in self.tokens(text) {
            if self.tokenizer != Tokenizer::Prefix {
                out.push(token);
                continue;
            }
            let ends = token
                .char_indices()
                .skip(1)
                .map(|(end, _)| end)
                .chain([token.len()]);
            for end in ends {
                let prefix = &token[..end];
                if self.keeps(prefix) {
                    out.push(prefix.to_owned());
                }
            }
        }
        out.sort();
        out.dedup();
        out
    }
}

/// How the query tokens of a [`TokenMatch`] must appear.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenMode {
    /// `match.text`: every query token.
    All,
    /// `match.text_any`: at least one.
    Any,
    /// `match.phrase`: all of them, consecutive and in order.
    Phrase,
}

/// A text condition bound to a key's `text` index.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenMatch {
    pub tokens: Vec<String>,
    pub mode: TokenMode,
    pub params: Arc<TextParams>,
}

impl TokenMatch {
    pub fn new(query: &str, mode: TokenMode, params: Arc<TextParams>) -> TokenMatch {
        TokenMatch {
            tokens: params.query_tokens(query),
            mode,
            params,
        }
    }

    /// Whether a stored string matches. A query with no tokens matches nothing.
    pub fn matches(&self, text: &str) -> bool {
        if self.tokens.is_empty() {
            return false;
        }
        let stored = self.params.tokens(text);
        let has = |q: &str| match self.params.tokenizer {
            Tokenizer::Prefix => stored.iter().any(|t| t.starts_with(q)),
            _ => stored.iter().any(|t| t == q),
        };
        match self.mode {
            TokenMode::All => self.tokens.iter().all(|q| has(q)),
            TokenMode::Any => self.tokens.iter().any(|q| has(q)),
            TokenMode::Phrase => stored.windows(self.tokens.len()).any(|w| {
                w.iter()
                    .zip(&self.tokens)
                    .all(|(t, q)| match self.params.tokenizer {
                        Tokenizer::Prefix => t.starts_with(q.as_str()),
                        _ => t == q,
                    })
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn params(v: Value) -> Arc<TextParams> {
        Arc::new(TextParams::from_schema(Some(&v)))
    }

    #[test]
    fn tokenizers_split_and_fold_as_qdrant_does() {
        let word = params(json!({"type": "text"}));
        assert_eq!(
            word.tokens("Hello, wide-World! x2"),
            ["hello", "wide", "world", "x2"]
        );
        let ws = params(json!({"type": "text", "tokenizer": "whitespace", "lowercase": false}));
        assert_eq!(ws.tokens("Hello, wide-World!"), ["Hello,", "wide-World!"]);
        let bounded = params(json!({"type": "text", "min_token_len": 2, "max_token_len": 4}));
        assert_eq!(bounded.tokens("a bb ccc dddd eeeee"), ["bb", "ccc", "dddd"]);
        let prefix = params(json!({"type": "text", "tokenizer": "prefix", "min_token_len": 2}));
        assert_eq!(prefix.indexed_tokens("Qdr ab"), ["ab", "qd", "qdr"]);
    }

    #[test]
    fn text_text_any_and_phrase_follow_tokens_not_substrings() {
        let p = params(json!({"type": "text", "phrase_matching": true}));
        let all = TokenMatch::new("fox QUICK", TokenMode::All, Arc::clone(&p));
        assert!(all.matches("The quick brown fox"));
        assert!(
            !all.matches("The quick brown foxes"),
            "tokens, not substrings"
        );
        let any = TokenMatch::new("cat fox", TokenMode::Any, Arc::clone(&p));
        assert!(any.matches("a fox"));
        assert!(!any.matches("a dog"));
        let phrase = TokenMatch::new("quick brown", TokenMode::Phrase, Arc::clone(&p));
        assert!(phrase.matches("the Quick, brown fox"));
        assert!(!phrase.matches("brown quick fox"));
        assert!(!TokenMatch::new("  ", TokenMode::All, p).matches("anything"));
        let prefix = params(json!({"type": "text", "tokenizer": "prefix"}));
        assert!(TokenMatch::new("qdr", TokenMode::All, prefix).matches("Qdrant rocks"));
        // A word longer than `max_token_len` keeps its prefixes up to it; a query word is cut.
        let capped = params(json!({"type": "text", "tokenizer": "prefix", "max_token_len": 5}));
        assert_eq!(
            capped.indexed_tokens("internationalization"),
            ["i", "in", "int", "inte", "inter"]
        );
        for q in ["inter", "international", "in"] {
            assert!(
                TokenMatch::new(q, TokenMode::All, Arc::clone(&capped))
                    .matches("Internationalization"),
                "{q}"
            );
        }
        assert!(!TokenMatch::new("intro", TokenMode::All, capped).matches("internationalization"));
    }
}
