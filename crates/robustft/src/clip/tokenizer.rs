//! OpenAI CLIP's byte-level BPE tokenizer, ported exactly.
//!
//! The reference is `SimpleTokenizer` in open_clip's `tokenizer.py` (open-clip-torch 3.3.0),
//! a copy of OpenAI CLIP's `clip/simple_tokenizer.py`, with open_clip's default
//! `clean="lower"`. [`Tokenizer::encode`] runs the same pipeline:
//!
//! 1. `basic_clean`: `ftfy.fix_text(text)` (see below), then Python's `html.unescape`
//!    twice (the full HTML5 entity table, the legacy entities that need no `;`, the longest
//!    prefix rule and the HTML5 rules for invalid numeric references), then `strip()`;
//! 2. `whitespace_clean`: `" ".join(text.split())`, splitting where Python's
//!    `str.isspace()` holds (Unicode `White_Space` plus U+001C..U+001F);
//! 3. `str.lower()` (full Unicode lower-casing with the final-sigma rule);
//! 4. the pre-tokenizer regex
//!    `<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+`
//!    compiled case-insensitively by Python's `regex` module: only the literal alternatives
//!    fold case (so `'ſ` matches `'s`), and U+0345, which folds to a Greek letter, belongs
//!    to no alternative and is dropped;
//! 5. each piece's UTF-8 bytes mapped to symbols (`bytes_to_unicode`), `</w>` glued to the
//!    last symbol, BPE merges applied lowest rank first, results cached. A piece that is
//!    exactly `<start_of_text>` or `<end_of_text>` is the special token itself.
//!
//! The special tokens use open_clip's spelling `<start_of_text>` / `<end_of_text>`; OpenAI's
//! original spells them `<|startoftext|>` / `<|endoftext|>`. The ids are the same (the last
//! two of the vocabulary); the spellings only matter for texts that contain them literally.
//!
//! Of `ftfy.fix_text` with its default `TextFixerConfig`, this module reproduces, per line
//! and repeated until nothing changes: `unescape_html` in its `"auto"` mode (ftfy's entity
//! table, upper-cased entities such as `&EACUTE;`, whole numeric references only; a line
//! containing `<` switches it off for that line and every later one), `fix_c1_controls`,
//! `fix_latin_ligatures`, `fix_character_width`, `uncurl_quotes`, `fix_line_breaks`,
//! `remove_terminal_escapes`, `remove_control_chars` and NFC normalization.
//! Not reproduced: `fix_encoding`, ftfy's mojibake repair (with `restore_byte_a0`,
//! `replace_lossy_sequences` and `decode_inconsistent_utf8`), so text such as `cafÃ©` is
//! left as it is; `fix_surrogates`, since a Rust string cannot hold surrogates; and the
//! splitting of lines longer than a million characters.
//!
//! Unicode versions differ: Python 3.11's NFC, `str.lower()` and `str.isspace()` use
//! Unicode 14.0 and the `regex` module's letter and number classes a newer one, while this
//! port uses the tables of `std`, `unicode-normalization` and the `regex` crate (Unicode
//! 16.0 for the classes). A sweep over every code point found differences only on
//! characters unassigned in one of the versions, plus final-sigma lower-casing after U+0295
//! and U+1171E, whose properties changed after Unicode 14.0.
//!
//! The vocabulary (`bpe_simple_vocab_16e6.txt.gz`) is bundled into the binary.
//! `tests/tokenizer_parity.rs` checks the port against fixtures written by
//! `scripts/fixtures/tokenizer.py`.

use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::sync::{LazyLock, Mutex, MutexGuard, PoisonError};

use regex::Regex;

/// The context length of every OpenAI CLIP text encoder.
pub const CONTEXT_LENGTH: usize = 77;
/// All merges in OpenAI's vocabulary file (49152 - 256 - 2 = 48894).
pub const FULL_MERGES: usize = 48894;

const VOCABULARY_GZ: &[u8] =
    include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../assets/bpe_simple_vocab_16e6.txt.gz"));
const START_OF_TEXT: &str = "<start_of_text>";
const END_OF_TEXT: &str = "<end_of_text>";
const END_OF_WORD: &str = "</w>";
/// Symbols for single bytes, then the same bytes ending a word: `512 = 2 * 256`.
const BYTE_SYMBOLS: u32 = 256;
const SPECIAL_TOKENS: usize = 2;
const REPLACEMENT_BYTES: &[u8] = "\u{FFFD}".as_bytes();
/// BPE results kept per tokenizer; beyond it new words are encoded without being cached.
const BPE_CACHE_LIMIT: usize = 1 << 18;

/// open_clip's pre-tokenizer pattern, with Python `regex`'s case-insensitive semantics made
/// explicit: only the literal alternatives fold case, and U+0345 matches nothing.
static PRE_TOKENIZER: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?i:<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d)|\p{L}+|\p{N}|[^\s\p{L}\p{N}\x{345}]+",
    )
    .expect("the pre-tokenizer pattern is valid")
});

/// Why a tokenizer could not be built or a text could not be tokenized.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// More merges were requested than the vocabulary file holds.
    #[error("requested {requested} BPE merges but the vocabulary holds only {available}")]
    TooManyMerges { requested: usize, available: usize },
    /// The bundled vocabulary file is corrupt.
    #[error("bad BPE vocabulary: {0}")]
    BadVocabulary(String),
    /// The context cannot hold the start and end tokens.
    #[error("context length {0} is too short: it must hold at least the start and end tokens")]
    ContextTooShort(usize),
}

/// CLIP's BPE tokenizer over the first `merges` merges of OpenAI's vocabulary.
///
/// Ids: 0..256 single bytes, 256..512 single bytes ending a word, then one id per merge,
/// then `<start_of_text>` and `<end_of_text>`.
pub struct Tokenizer {
    merges: usize,
    /// Id of the symbol of each byte (add [`BYTE_SYMBOLS`] for the word-final symbol).
    byte_ids: [u32; 256],
    /// Id of the symbol each mergeable pair of symbol ids merges into. Merged ids grow with
    /// the merge's rank, so the lowest id is the merge BPE applies first.
    merged_ids: HashMap<(u32, u32), u32>,
    /// The bytes each id stands for, as OpenAI's `decode` sees them (`</w>` included).
    id_bytes: Vec<Vec<u8>>,
    cache: Mutex<HashMap<String, Vec<u32>>>,
}

impl fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokenizer")
            .field("merges", &self.merges)
            .field("vocab_size", &self.vocab_size())
            .finish_non_exhaustive()
    }
}

impl Tokenizer {
    /// OpenAI's full vocabulary: 49408 ids.
    pub fn openai() -> Result<Self, TokenizerError> {
        Self::with_merges(FULL_MERGES)
    }

    /// Only the first `n` merges of OpenAI's vocabulary, as open_clip's `SimpleTokenizer`
    /// built from a vocabulary file cut after `n` merges.
    pub fn with_merges(n: usize) -> Result<Self, TokenizerError> {
        if n > FULL_MERGES {
            return Err(TokenizerError::TooManyMerges { requested: n, available: FULL_MERGES });
        }
        let text = decompress_vocabulary()?;
        let merge_lines: Vec<&str> = text.split('\n').skip(1).take(n).collect();
        if merge_lines.len() < n {
            return Err(TokenizerError::BadVocabulary(format!(
                "the file holds {} merges, {n} requested",
                merge_lines.len()
            )));
        }
        Self::from_merge_lines(&merge_lines)
    }

    fn from_merge_lines(merge_lines: &[&str]) -> Result<Self, TokenizerError> {
        let byte_symbols = bytes_to_unicode();
        let mut byte_ids = [0u32; 256];
        let mut symbol_ids: HashMap<String, u32> = HashMap::new();
        let mut id_bytes = Vec::with_capacity(2 * BYTE_SYMBOLS as usize + merge_lines.len() + SPECIAL_TOKENS);
        for (id, &(byte, symbol)) in (0u32..).zip(byte_symbols.iter()) {
            byte_ids[usize::from(byte)] = id;
            symbol_ids.insert(symbol.to_string(), id);
            id_bytes.push(vec![byte]);
        }
        for (id, &(byte, symbol)) in (BYTE_SYMBOLS..).zip(byte_symbols.iter()) {
            symbol_ids.insert(format!("{symbol}{END_OF_WORD}"), id);
            id_bytes.push([&[byte], END_OF_WORD.as_bytes()].concat());
        }
        let mut merged_ids = HashMap::with_capacity(merge_lines.len());
        for (merged_id, line) in (2 * BYTE_SYMBOLS..).zip(merge_lines) {
            let (first, second) = split_merge_line(line)?;
            let first_id = symbol_id(&symbol_ids, first)?;
            let second_id = symbol_id(&symbol_ids, second)?;
            if symbol_ids.insert(format!("{first}{second}"), merged_id).is_some() {
                return Err(TokenizerError::BadVocabulary(format!("merge {line:?} repeats a symbol")));
            }
            if merged_ids.insert((first_id, second_id), merged_id).is_some() {
                return Err(TokenizerError::BadVocabulary(format!("merge {line:?} is listed twice")));
            }
            let merged_bytes =
                [id_bytes[first_id as usize].as_slice(), &id_bytes[second_id as usize]].concat();
            id_bytes.push(merged_bytes);
        }
        id_bytes.push(START_OF_TEXT.as_bytes().to_vec());
        id_bytes.push(END_OF_TEXT.as_bytes().to_vec());
        Ok(Self {
            merges: merge_lines.len(),
            byte_ids,
            merged_ids,
            id_bytes,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// Number of BPE merges in use.
    pub fn merges(&self) -> usize {
        self.merges
    }

    /// Number of ids: 512 byte symbols, one per merge, and the two special tokens.
    pub fn vocab_size(&self) -> usize {
        2 * BYTE_SYMBOLS as usize + self.merges + SPECIAL_TOKENS
    }

    /// Id of `<start_of_text>` (OpenAI's `<|startoftext|>`): `vocab_size - 2`.
    pub fn sot_token(&self) -> u32 {
        self.first_special_id()
    }

    /// Id of `<end_of_text>` (OpenAI's `<|endoftext|>`): `vocab_size - 1`.
    pub fn eot_token(&self) -> u32 {
        self.first_special_id() + 1
    }

    fn first_special_id(&self) -> u32 {
        // Lossless: `merges` never exceeds FULL_MERGES.
        2 * BYTE_SYMBOLS + self.merges as u32
    }

    /// BPE ids of `text`, without start and end tokens: open_clip's
    /// `SimpleTokenizer.encode`.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let cleaned = clean_text(text);
        let mut ids = Vec::new();
        for piece in PRE_TOKENIZER.find_iter(&cleaned) {
            match piece.as_str() {
                START_OF_TEXT => ids.push(self.sot_token()),
                END_OF_TEXT => ids.push(self.eot_token()),
                word => self.extend_with_word(word, &mut ids),
            }
        }
        ids
    }

    fn extend_with_word(&self, word: &str, ids: &mut Vec<u32>) {
        if let Some(cached) = self.lock_cache().get(word) {
            ids.extend_from_slice(cached);
            return;
        }
        let merged = self.bpe(word.as_bytes());
        ids.extend_from_slice(&merged);
        let mut cache = self.lock_cache();
        if cache.len() < BPE_CACHE_LIMIT {
            cache.insert(word.to_owned(), merged);
        }
    }

    /// The cache only ever holds finished BPE results, so a poisoned lock is still usable.
    fn lock_cache(&self) -> MutexGuard<'_, HashMap<String, Vec<u32>>> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Splits a non-empty word into byte symbols, marks the last one as word-final and
    /// applies the lowest-ranked merge to every occurrence until none applies.
    fn bpe(&self, word: &[u8]) -> Vec<u32> {
        let Some((&last, init)) = word.split_last() else {
            return Vec::new();
        };
        let mut symbols: Vec<u32> = init
            .iter()
            .map(|&byte| self.byte_ids[usize::from(byte)])
            .chain(std::iter::once(self.byte_ids[usize::from(last)] + BYTE_SYMBOLS))
            .collect();
        while let Some((pair, merged_id)) = self.lowest_ranked_pair(&symbols) {
            symbols = merge_pair(&symbols, pair, merged_id);
        }
        symbols
    }

    fn lowest_ranked_pair(&self, symbols: &[u32]) -> Option<((u32, u32), u32)> {
        symbols
            .windows(2)
            .filter_map(|window| {
                let pair = (window[0], window[1]);
                self.merged_ids.get(&pair).map(|&merged_id| (pair, merged_id))
            })
            .min_by_key(|&(_, merged_id)| merged_id)
    }

    /// Text of `ids` as OpenAI's `decode`: bytes decoded as lossy UTF-8, every `</w>`
    /// replaced by a space. Ids outside the vocabulary decode to U+FFFD (Python raises).
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            match self.id_bytes.get(id as usize) {
                Some(symbol) => bytes.extend_from_slice(symbol),
                None => bytes.extend_from_slice(REPLACEMENT_BYTES),
            }
        }
        String::from_utf8_lossy(&bytes).replace(END_OF_WORD, " ")
    }

    /// `[sot] + encode(text) + [eot]`, cut to `context_length` with `eot` kept last, padded
    /// with zeros: one row of open_clip's `SimpleTokenizer.__call__`.
    pub fn tokenize(&self, text: &str, context_length: usize) -> Result<Vec<u32>, TokenizerError> {
        check_context_length(context_length)?;
        let mut row = Vec::with_capacity(context_length);
        row.push(self.sot_token());
        row.extend(self.encode(text));
        row.push(self.eot_token());
        if row.len() > context_length {
            row.truncate(context_length);
            row[context_length - 1] = self.eot_token();
        }
        row.resize(context_length, 0);
        Ok(row)
    }

    /// [`Tokenizer::tokenize`] for each text.
    pub fn tokenize_batch<S: AsRef<str>>(
        &self,
        texts: &[S],
        context_length: usize,
    ) -> Result<Vec<Vec<u32>>, TokenizerError> {
        check_context_length(context_length)?;
        texts.iter().map(|text| self.tokenize(text.as_ref(), context_length)).collect()
    }
}

fn check_context_length(context_length: usize) -> Result<(), TokenizerError> {
    if context_length < 2 {
        return Err(TokenizerError::ContextTooShort(context_length));
    }
    Ok(())
}

fn decompress_vocabulary() -> Result<String, TokenizerError> {
    let mut text = String::new();
    flate2::read::GzDecoder::new(VOCABULARY_GZ)
        .read_to_string(&mut text)
        .map_err(|error| TokenizerError::BadVocabulary(format!("cannot decompress: {error}")))?;
    Ok(text)
}

fn split_merge_line(line: &str) -> Result<(&str, &str), TokenizerError> {
    match line.split_once(' ') {
        Some((first, second)) if !first.is_empty() && !second.is_empty() && !second.contains(' ') => {
            Ok((first, second))
        }
        _ => Err(TokenizerError::BadVocabulary(format!("merge line {line:?} is not two symbols"))),
    }
}

fn symbol_id(symbol_ids: &HashMap<String, u32>, symbol: &str) -> Result<u32, TokenizerError> {
    symbol_ids.get(symbol).copied().ok_or_else(|| {
        TokenizerError::BadVocabulary(format!("merge symbol {symbol:?} is defined by no earlier line"))
    })
}

/// Replaces every non-overlapping occurrence of `pair`, left to right, by `merged`.
fn merge_pair(symbols: &[u32], pair: (u32, u32), merged: u32) -> Vec<u32> {
    let mut out = Vec::with_capacity(symbols.len());
    let mut i = 0;
    while i < symbols.len() {
        if i + 1 < symbols.len() && (symbols[i], symbols[i + 1]) == pair {
            out.push(merged);
            i += 2;
        } else {
            out.push(symbols[i]);
            i += 1;
        }
    }
    out
}

/// OpenAI's `bytes_to_unicode`, in vocabulary order: the printable Latin-1 bytes stand for
/// themselves, the other 68 bytes for U+0100 onwards.
fn bytes_to_unicode() -> Vec<(u8, char)> {
    let is_printable = |byte: u8| matches!(byte, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let printable = (0..=255u8).filter(|&byte| is_printable(byte));
    let others = (0..=255u8).filter(|&byte| !is_printable(byte));
    let mut table: Vec<(u8, char)> = printable.map(|byte| (byte, char::from(byte))).collect();
    for (offset, byte) in (0u32..).zip(others) {
        let symbol = char::from_u32(256 + offset).expect("U+0100..=U+0143 are characters");
        table.push((byte, symbol));
    }
    table
}

/// open_clip's `_clean_lower`: `whitespace_clean(basic_clean(text)).lower()`, the text that
/// the pre-tokenizer regex sees.
pub fn clean_text(text: &str) -> String {
    let fixed = ftfy::fix_text(text);
    let once = html::unescape(&fixed);
    let twice = html::unescape(&once);
    let words: Vec<&str> = twice.split(is_python_space).filter(|w| !w.is_empty()).collect();
    words.join(" ").to_lowercase()
}

/// Python's `str.isspace()`: Unicode `White_Space` plus the four separators U+001C..U+001F.
fn is_python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1C}'..='\u{1F}').contains(&c)
}

/// Windows-1252 for the C1 range U+0080..U+009F; its five unassigned bytes stay as they are
/// (HTML5's table for numeric references and ftfy's `sloppy-windows-1252` agree).
const WINDOWS_1252_C1: [char; 32] = [
    '\u{20AC}', '\u{0081}', '\u{201A}', '\u{0192}', '\u{201E}', '\u{2026}', '\u{2020}', '\u{2021}',
    '\u{02C6}', '\u{2030}', '\u{0160}', '\u{2039}', '\u{0152}', '\u{008D}', '\u{017D}', '\u{008F}',
    '\u{0090}', '\u{2018}', '\u{2019}', '\u{201C}', '\u{201D}', '\u{2022}', '\u{2013}', '\u{2014}',
    '\u{02DC}', '\u{2122}', '\u{0161}', '\u{203A}', '\u{0153}', '\u{009D}', '\u{017E}', '\u{0178}',
];

fn windows_1252_for_c1(c: char) -> char {
    match c {
        '\u{80}'..='\u{9F}' => WINDOWS_1252_C1[c as usize - 0x80],
        _ => c,
    }
}

/// Python's `html.unescape` and the entity tables it shares with ftfy.
mod html {
    use std::borrow::Cow;

    use super::windows_1252_for_c1;

    /// Longest name `html.unescape` looks at after `&`.
    const MAX_NAME_CHARS: usize = 32;

    /// HTML5 entities (with `;`) whose value is several code points; `html-escape`'s table
    /// keeps only the first of them.
    const MULTI_CODE_POINT_ENTITIES: [(&str, &str); 93] = [
        ("NotEqualTilde", "\u{2242}\u{0338}"),
        ("NotGreaterFullEqual", "\u{2267}\u{0338}"),
        ("NotGreaterGreater", "\u{226B}\u{0338}"),
        ("NotGreaterSlantEqual", "\u{2A7E}\u{0338}"),
        ("NotHumpDownHump", "\u{224E}\u{0338}"),
        ("NotHumpEqual", "\u{224F}\u{0338}"),
        ("NotLeftTriangleBar", "\u{29CF}\u{0338}"),
        ("NotLessLess", "\u{226A}\u{0338}"),
        ("NotLessSlantEqual", "\u{2A7D}\u{0338}"),
        ("NotNestedGreaterGreater", "\u{2AA2}\u{0338}"),
        ("NotNestedLessLess", "\u{2AA1}\u{0338}"),
        ("NotPrecedesEqual", "\u{2AAF}\u{0338}"),
        ("NotRightTriangleBar", "\u{29D0}\u{0338}"),
        ("NotSquareSubset", "\u{228F}\u{0338}"),
        ("NotSquareSuperset", "\u{2290}\u{0338}"),
        ("NotSubset", "\u{2282}\u{20D2}"),
        ("NotSucceedsEqual", "\u{2AB0}\u{0338}"),
        ("NotSucceedsTilde", "\u{227F}\u{0338}"),
        ("NotSuperset", "\u{2283}\u{20D2}"),
        ("ThickSpace", "\u{205F}\u{200A}"),
        ("acE", "\u{223E}\u{0333}"),
        ("bne", "\u{003D}\u{20E5}"),
        ("bnequiv", "\u{2261}\u{20E5}"),
        ("caps", "\u{2229}\u{FE00}"),
        ("cups", "\u{222A}\u{FE00}"),
        ("fjlig", "\u{0066}\u{006A}"),
        ("gesl", "\u{22DB}\u{FE00}"),
        ("gvertneqq", "\u{2269}\u{FE00}"),
        ("gvnE", "\u{2269}\u{FE00}"),
        ("lates", "\u{2AAD}\u{FE00}"),
        ("lesg", "\u{22DA}\u{FE00}"),
        ("lvertneqq", "\u{2268}\u{FE00}"),
        ("lvnE", "\u{2268}\u{FE00}"),
        ("nGg", "\u{22D9}\u{0338}"),
        ("nGt", "\u{226B}\u{20D2}"),
        ("nGtv", "\u{226B}\u{0338}"),
        ("nLl", "\u{22D8}\u{0338}"),
        ("nLt", "\u{226A}\u{20D2}"),
        ("nLtv", "\u{226A}\u{0338}"),
        ("nang", "\u{2220}\u{20D2}"),
        ("napE", "\u{2A70}\u{0338}"),
        ("napid", "\u{224B}\u{0338}"),
        ("nbump", "\u{224E}\u{0338}"),
        ("nbumpe", "\u{224F}\u{0338}"),
        ("ncongdot", "\u{2A6D}\u{0338}"),
        ("nedot", "\u{2250}\u{0338}"),
        ("nesim", "\u{2242}\u{0338}"),
        ("ngE", "\u{2267}\u{0338}"),
        ("ngeqq", "\u{2267}\u{0338}"),
        ("ngeqslant", "\u{2A7E}\u{0338}"),
        ("nges", "\u{2A7E}\u{0338}"),
        ("nlE", "\u{2266}\u{0338}"),
        ("nleqq", "\u{2266}\u{0338}"),
        ("nleqslant", "\u{2A7D}\u{0338}"),
        ("nles", "\u{2A7D}\u{0338}"),
        ("notinE", "\u{22F9}\u{0338}"),
        ("notindot", "\u{22F5}\u{0338}"),
        ("nparsl", "\u{2AFD}\u{20E5}"),
        ("npart", "\u{2202}\u{0338}"),
        ("npre", "\u{2AAF}\u{0338}"),
        ("npreceq", "\u{2AAF}\u{0338}"),
        ("nrarrc", "\u{2933}\u{0338}"),
        ("nrarrw", "\u{219D}\u{0338}"),
        ("nsce", "\u{2AB0}\u{0338}"),
        ("nsubE", "\u{2AC5}\u{0338}"),
        ("nsubset", "\u{2282}\u{20D2}"),
        ("nsubseteqq", "\u{2AC5}\u{0338}"),
        ("nsucceq", "\u{2AB0}\u{0338}"),
        ("nsupE", "\u{2AC6}\u{0338}"),
        ("nsupset", "\u{2283}\u{20D2}"),
        ("nsupseteqq", "\u{2AC6}\u{0338}"),
        ("nvap", "\u{224D}\u{20D2}"),
        ("nvge", "\u{2265}\u{20D2}"),
        ("nvgt", "\u{003E}\u{20D2}"),
        ("nvle", "\u{2264}\u{20D2}"),
        ("nvlt", "\u{003C}\u{20D2}"),
        ("nvltrie", "\u{22B4}\u{20D2}"),
        ("nvrtrie", "\u{22B5}\u{20D2}"),
        ("nvsim", "\u{223C}\u{20D2}"),
        ("race", "\u{223D}\u{0331}"),
        ("smtes", "\u{2AAC}\u{FE00}"),
        ("sqcaps", "\u{2293}\u{FE00}"),
        ("sqcups", "\u{2294}\u{FE00}"),
        ("varsubsetneq", "\u{228A}\u{FE00}"),
        ("varsubsetneqq", "\u{2ACB}\u{FE00}"),
        ("varsupsetneq", "\u{228B}\u{FE00}"),
        ("varsupsetneqq", "\u{2ACC}\u{FE00}"),
        ("vnsub", "\u{2282}\u{20D2}"),
        ("vnsup", "\u{2283}\u{20D2}"),
        ("vsubnE", "\u{2ACB}\u{FE00}"),
        ("vsubne", "\u{228A}\u{FE00}"),
        ("vsupnE", "\u{2ACC}\u{FE00}"),
        ("vsupne", "\u{228B}\u{FE00}"),
    ];

    /// The entities HTML5 (and Python's `html.entities.html5`) also accepts without `;`;
    /// each has the same value as its `;` form.
    const LEGACY_ENTITY_NAMES: [&str; 106] = [
        "AElig", "AMP", "Aacute", "Acirc", "Agrave", "Aring", "Atilde", "Auml", "COPY", "Ccedil", "ETH",
        "Eacute", "Ecirc", "Egrave", "Euml", "GT", "Iacute", "Icirc", "Igrave", "Iuml", "LT", "Ntilde",
        "Oacute", "Ocirc", "Ograve", "Oslash", "Otilde", "Ouml", "QUOT", "REG", "THORN", "Uacute", "Ucirc",
        "Ugrave", "Uuml", "Yacute", "aacute", "acirc", "acute", "aelig", "agrave", "amp", "aring", "atilde",
        "auml", "brvbar", "ccedil", "cedil", "cent", "copy", "curren", "deg", "divide", "eacute", "ecirc",
        "egrave", "eth", "euml", "frac12", "frac14", "frac34", "gt", "iacute", "icirc", "iexcl", "igrave",
        "iquest", "iuml", "laquo", "lt", "macr", "micro", "middot", "nbsp", "not", "ntilde", "oacute",
        "ocirc", "ograve", "ordf", "ordm", "oslash", "otilde", "ouml", "para", "plusmn", "pound", "quot",
        "raquo", "reg", "sect", "shy", "sup1", "sup2", "sup3", "szlig", "thorn", "times", "uacute", "ucirc",
        "ugrave", "uml", "uuml", "yacute", "yen", "yuml",
    ];

    /// Value of the HTML5 entity `&name;` (`name` without the `;`).
    fn entity_with_semicolon(name: &str) -> Option<&'static str> {
        if let Ok(index) = MULTI_CODE_POINT_ENTITIES.binary_search_by(|(n, _)| n.cmp(&name)) {
            return Some(MULTI_CODE_POINT_ENTITIES[index].1);
        }
        let table = &html_escape::NAMED_ENTITIES;
        table.binary_search_by(|(n, _)| n.cmp(&name.as_bytes())).ok().map(|index| table[index].1)
    }

    /// Value of the legacy entity `&name` written without `;`.
    fn entity_without_semicolon(name: &str) -> Option<&'static str> {
        LEGACY_ENTITY_NAMES.binary_search(&name).ok().and_then(|_| entity_with_semicolon(name))
    }

    /// Python's `html.unescape`.
    pub(super) fn unescape(text: &str) -> Cow<'_, str> {
        replace_references(text, character_reference)
    }

    /// Decodes the reference right after an `&`: the bytes it consumes and its replacement.
    type ReferenceDecoder = fn(&str) -> Option<(usize, Cow<'static, str>)>;

    /// Replaces each `&` that `decode` recognises; every other `&` stays.
    fn replace_references(text: &str, decode: ReferenceDecoder) -> Cow<'_, str> {
        if !text.contains('&') {
            return Cow::Borrowed(text);
        }
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(ampersand) = rest.find('&') {
            out.push_str(&rest[..ampersand]);
            let after = &rest[ampersand + 1..];
            match decode(after) {
                Some((consumed, replacement)) => {
                    out.push_str(&replacement);
                    rest = &after[consumed..];
                }
                None => {
                    out.push('&');
                    rest = after;
                }
            }
        }
        out.push_str(rest);
        Cow::Owned(out)
    }

    /// The reference `html.unescape` decodes right after an `&`: the bytes it consumes and
    /// its replacement, or `None` where it leaves the text alone.
    fn character_reference(after: &str) -> Option<(usize, Cow<'static, str>)> {
        match after.strip_prefix('#') {
            Some(number) => numeric_reference(number).map(|(len, value)| (1 + len, value)),
            None => named_reference(after),
        }
    }

    /// `#[0-9]+;?` or `#[xX][0-9a-fA-F]+;?`, `number` being the text after `#`.
    fn numeric_reference(number: &str) -> Option<(usize, Cow<'static, str>)> {
        let (prefix_len, radix) = match number.as_bytes().first() {
            Some(b'x' | b'X') => (1, 16),
            _ => (0, 10),
        };
        let digits_text = &number[prefix_len..];
        let digits = digits_text.bytes().take_while(|b| char::from(*b).is_digit(radix)).count();
        if digits == 0 {
            return None;
        }
        let value = parse_saturating(&digits_text[..digits], radix);
        let semicolon = usize::from(digits_text[digits..].starts_with(';'));
        let replacement =
            numeric_reference_value(value).map_or(Cow::Borrowed(""), |c| Cow::Owned(c.to_string()));
        Some((prefix_len + digits + semicolon, replacement))
    }

    fn parse_saturating(digits: &str, radix: u32) -> u64 {
        digits.chars().fold(0u64, |value, digit| {
            let digit = u64::from(digit.to_digit(radix).unwrap_or(0));
            value.saturating_mul(u64::from(radix)).saturating_add(digit)
        })
    }

    /// HTML5's rules for a numeric reference, as Python applies them; `None` stands for
    /// the code points that Python drops.
    pub(super) fn numeric_reference_value(value: u64) -> Option<char> {
        match value {
            0 => Some(char::REPLACEMENT_CHARACTER),
            0x0D => Some('\r'),
            0x80..=0x9F => char::from_u32(value as u32).map(windows_1252_for_c1),
            0xD800..=0xDFFF => Some(char::REPLACEMENT_CHARACTER),
            v if v > 0x10FFFF => Some(char::REPLACEMENT_CHARACTER),
            0x01..=0x08 | 0x0B | 0x0E..=0x1F | 0x7F | 0xFDD0..=0xFDEF => None,
            v if v & 0xFFFE == 0xFFFE => None,
            v => char::from_u32(v as u32),
        }
    }

    /// `[^\t\n\f <&#;]{1,32};?`: the exact entity if there is one, else the longest legacy
    /// entity that starts the name, followed by the rest of the name.
    fn named_reference(after: &str) -> Option<(usize, Cow<'static, str>)> {
        let name_len: usize = after
            .chars()
            .take_while(|c| !matches!(c, '\t' | '\n' | '\x0C' | ' ' | '<' | '&' | '#' | ';'))
            .take(MAX_NAME_CHARS)
            .map(char::len_utf8)
            .sum();
        if name_len == 0 {
            return None;
        }
        let name = &after[..name_len];
        let has_semicolon = after[name_len..].starts_with(';');
        let consumed = name_len + usize::from(has_semicolon);
        let exact = if has_semicolon { entity_with_semicolon(name) } else { entity_without_semicolon(name) };
        if let Some(value) = exact {
            return Some((consumed, Cow::Borrowed(value)));
        }
        // Python tries the prefixes `s[:x]` for x from len(s) - 1 down to 2, where s is the
        // name plus its `;`; none of them contains the `;`.
        let longest_prefix = if has_semicolon { name_len } else { name_len - 1 };
        (2..=longest_prefix)
            .rev()
            .filter(|&len| name.is_char_boundary(len))
            .find_map(|len| entity_without_semicolon(&name[..len]).map(|value| (len, value)))
            .map(|(len, value)| {
                let rest = &after[len..consumed];
                (consumed, Cow::Owned(format!("{value}{rest}")))
            })
    }

    /// ftfy's `unescape_html`: `&#?[0-9A-Za-z]{1,24};` replaced where ftfy's table (HTML5
    /// entities with `;`, plus upper-cased forms of the lower-case ones) has it, or where
    /// `html.unescape` decodes the whole numeric reference.
    pub(super) fn unescape_ftfy(text: &str) -> Cow<'_, str> {
        replace_references(text, ftfy_reference)
    }

    fn ftfy_reference(after: &str) -> Option<(usize, Cow<'static, str>)> {
        let hash = usize::from(after.starts_with('#'));
        let body = &after[hash..];
        let alphanumerics = body.bytes().take_while(u8::is_ascii_alphanumeric).count();
        if !(1..=24).contains(&alphanumerics) || !body[alphanumerics..].starts_with(';') {
            return None;
        }
        let consumed = hash + alphanumerics + 1;
        let name = &body[..alphanumerics];
        if hash == 1 {
            // ftfy keeps the reference unless html.unescape turns all of it into text
            // without a `;` (so `&#59;` stays).
            return character_reference(after)
                .filter(|(len, value)| *len == consumed && !value.contains(';'));
        }
        if let Some(value) = entity_with_semicolon(name) {
            return Some((consumed, Cow::Borrowed(value)));
        }
        upper_cased_entity(name, &after[..consumed]).map(|value| (consumed, Cow::Owned(value)))
    }

    /// ftfy also decodes `&NAME;` for a lower-case entity `&name;` when `html.unescape`
    /// would leave `&NAME;` alone; the value is upper-cased (`&SZLIG;` is `SS`).
    fn upper_cased_entity(name: &str, reference: &str) -> Option<String> {
        if name.bytes().any(|b| b.is_ascii_lowercase()) {
            return None;
        }
        let value = entity_with_semicolon(&name.to_ascii_lowercase())?;
        if character_reference(reference).is_some() {
            return None;
        }
        Some(value.to_uppercase())
    }
}

/// `ftfy.fix_text` with its default configuration, minus the mojibake repair.
mod ftfy {
    use std::borrow::Cow;
    use std::sync::LazyLock;

    use regex::Regex;
    use unicode_normalization::{is_nfc_quick, IsNormalized, UnicodeNormalization};

    use super::{html, windows_1252_for_c1};

    static TERMINAL_ESCAPE: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"\x1B\[[\d;]*[a-zA-Z]").expect("the terminal-escape pattern is valid"));

    /// Fixes each line (up to and including its `\n`) on its own. HTML entities are decoded
    /// until the first line that contains `<` (ftfy's `unescape_html="auto"`).
    pub(super) fn fix_text(text: &str) -> String {
        let mut unescape_html = true;
        let mut out = String::with_capacity(text.len());
        for line in text.split_inclusive('\n') {
            unescape_html &= !line.contains('<');
            out.push_str(&fix_line(line, unescape_html));
        }
        out
    }

    /// ftfy's `fix_and_explain`: every fixer in order, repeated until nothing changes.
    fn fix_line(line: &str, unescape_html: bool) -> String {
        let mut text = line.to_owned();
        while let Some(fixed) = fix_once(&text, unescape_html) {
            text = fixed;
        }
        text
    }

    /// One round of every fixer; `None` when it changes nothing.
    fn fix_once(text: &str, unescape_html: bool) -> Option<String> {
        let unescaped = if unescape_html { html::unescape_ftfy(text) } else { Cow::Borrowed(text) };
        let translated = translate_characters(&unescaped);
        let unified = unify_line_breaks(&translated);
        let without_escapes = TERMINAL_ESCAPE.replace_all(&unified, "");
        let without_controls = remove_control_characters(&without_escapes);
        let normalized = normalize_nfc(&without_controls);
        (normalized != text).then(|| normalized.into_owned())
    }

    fn normalize_nfc(text: &str) -> Cow<'_, str> {
        if is_nfc_quick(text.chars()) == IsNormalized::Yes {
            Cow::Borrowed(text)
        } else {
            Cow::Owned(text.nfc().collect())
        }
    }

    /// `fix_c1_controls`, `fix_latin_ligatures`, `fix_character_width` and `uncurl_quotes`,
    /// which all map characters one by one, applied in that order.
    pub(super) fn translate_characters(text: &str) -> Cow<'_, str> {
        if !text.chars().any(needs_translation) {
            return Cow::Borrowed(text);
        }
        let mut out = String::with_capacity(text.len());
        for c in text.chars() {
            let c = windows_1252_for_c1(c);
            match latin_ligature(c) {
                Some(letters) => letters.chars().for_each(|l| push_standard_width(l, &mut out)),
                None => push_standard_width(c, &mut out),
            }
        }
        Cow::Owned(out)
    }

    fn needs_translation(c: char) -> bool {
        windows_1252_for_c1(c) != c
            || latin_ligature(c).is_some()
            || is_width_variant(c)
            || straight_quote(c) != c
    }

    /// ftfy's `LIGATURES`: Latin typographic ligatures and legacy digraphs.
    pub(super) fn latin_ligature(c: char) -> Option<&'static str> {
        Some(match c {
            '\u{0132}' => "IJ",
            '\u{0133}' => "ij",
            '\u{0149}' => "\u{02BC}n",
            '\u{01F1}' => "DZ",
            '\u{01F2}' => "Dz",
            '\u{01F3}' => "dz",
            '\u{01C4}' => "D\u{017D}",
            '\u{01C5}' => "D\u{017E}",
            '\u{01C6}' => "d\u{017E}",
            '\u{01C7}' => "LJ",
            '\u{01C8}' => "Lj",
            '\u{01C9}' => "lj",
            '\u{01CA}' => "NJ",
            '\u{01CB}' => "Nj",
            '\u{01CC}' => "nj",
            '\u{FB00}' => "ff",
            '\u{FB01}' => "fi",
            '\u{FB02}' => "fl",
            '\u{FB03}' => "ffi",
            '\u{FB04}' => "ffl",
            '\u{FB05}' => "\u{017F}t",
            '\u{FB06}' => "st",
            _ => return None,
        })
    }

    /// ftfy's `WIDTH_MAP` covers the ideographic space and U+FF01..U+FFEF.
    fn is_width_variant(c: char) -> bool {
        c == '\u{3000}' || ('\u{FF01}'..='\u{FFEF}').contains(&c)
    }

    /// Pushes `c` at its standard width (its NFKC form; U+3000 becomes a space), then with
    /// curly quotes straightened.
    fn push_standard_width(c: char, out: &mut String) {
        if c == '\u{3000}' {
            out.push(' ');
        } else if is_width_variant(c) {
            std::iter::once(c).nfkc().for_each(|n| out.push(straight_quote(n)));
        } else {
            out.push(straight_quote(c));
        }
    }

    /// `uncurl_quotes`: U+02BC and U+2018..U+201B become `'`, U+201C..U+201F become `"`.
    pub(super) fn straight_quote(c: char) -> char {
        match c {
            '\u{02BC}' | '\u{2018}'..='\u{201B}' => '\'',
            '\u{201C}'..='\u{201F}' => '"',
            _ => c,
        }
    }

    /// `fix_line_breaks`: `\r\n`, `\r`, U+2028, U+2029 and U+0085 become `\n`.
    pub(super) fn unify_line_breaks(text: &str) -> Cow<'_, str> {
        if !text.contains(['\r', '\u{2028}', '\u{2029}', '\u{85}']) {
            return Cow::Borrowed(text);
        }
        let mut out = String::with_capacity(text.len());
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\r' if chars.peek() == Some(&'\n') => {}
                '\r' | '\u{2028}' | '\u{2029}' | '\u{85}' => out.push('\n'),
                _ => out.push(c),
            }
        }
        Cow::Owned(out)
    }

    /// `remove_control_chars`: C0 controls other than `\t \n \x0C \r`, DEL, the deprecated
    /// format characters U+206A..U+206F, the BOM and U+FFF9..U+FFFC.
    pub(super) fn remove_control_characters(text: &str) -> Cow<'_, str> {
        if !text.chars().any(is_removed_control) {
            return Cow::Borrowed(text);
        }
        Cow::Owned(text.chars().filter(|&c| !is_removed_control(c)).collect())
    }

    fn is_removed_control(c: char) -> bool {
        matches!(
            c,
            '\u{00}'..='\u{08}'
                | '\u{0B}'
                | '\u{0E}'..='\u{1F}'
                | '\u{7F}'
                | '\u{206A}'..='\u{206F}'
                | '\u{FEFF}'
                | '\u{FFF9}'..='\u{FFFC}'
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_symbols_follow_openai_order() {
        let table = bytes_to_unicode();
        assert_eq!(table.len(), 256);
        assert_eq!(table[0], (b'!', '!'));
        // 94 + 12 + 82 printable bytes come first, then byte 0 as U+0100.
        assert_eq!(table[188], (0, '\u{100}'));
        assert_eq!(table[188 + 32], (b' ', '\u{120}'));
        assert_eq!(table[255], (0xAD, '\u{143}'));
    }

    #[test]
    fn merge_pair_replaces_left_to_right_without_overlap() {
        assert_eq!(merge_pair(&[1, 1, 1], (1, 1), 9), vec![9, 1]);
        assert_eq!(merge_pair(&[2, 1, 1, 3, 1, 1], (1, 1), 9), vec![2, 9, 3, 9]);
        assert_eq!(merge_pair(&[1, 2], (2, 1), 9), vec![1, 2]);
    }

    #[test]
    fn merge_lines_must_hold_two_symbols() {
        assert_eq!(split_merge_line("t h</w>").unwrap(), ("t", "h</w>"));
        assert!(split_merge_line("th").is_err());
        assert!(split_merge_line("a b c").is_err());
        assert!(split_merge_line("").is_err());
    }

    #[test]
    fn python_space_includes_information_separators() {
        assert!(is_python_space('\u{1C}') && is_python_space('\u{85}'));
        assert!(is_python_space('\u{3000}') && !is_python_space('\u{200B}'));
    }

    #[test]
    fn html_unescape_matches_python() {
        // html.unescape(...) in Python 3.11
        let cases = [
            ("&amp;amp;", "&amp;"),
            ("&notit;", "\u{AC}it;"),
            ("&notin;", "\u{2209}"),
            ("&ampx", "&x"),
            ("&copy 2020", "\u{A9} 2020"),
            ("&#65&#x42;&#X43", "ABC"),
            ("&#0;&#13;&#150;&#11;&#xD800;&#1114112;", "\u{FFFD}\r\u{2013}\u{FFFD}\u{FFFD}"),
            ("&#x;&#;&;&", "&#x;&#;&;&"),
            ("&fjlig;&bne;", "fj=\u{20E5}"),
            ("&NTILDE;", "&NTILDE;"),
        ];
        for (input, expected) in cases {
            assert_eq!(html::unescape(input), expected, "{input:?}");
        }
    }

    #[test]
    fn numeric_references_follow_html5() {
        assert_eq!(html::numeric_reference_value(0x81), Some('\u{81}'));
        assert_eq!(html::numeric_reference_value(0x9F), Some('\u{178}'));
        assert_eq!(html::numeric_reference_value(0x1FFFF), None);
        assert_eq!(html::numeric_reference_value(0xFDD0), None);
        assert_eq!(html::numeric_reference_value(u64::MAX), Some('\u{FFFD}'));
        assert_eq!(html::numeric_reference_value(0x1F600), Some('\u{1F600}'));
    }

    #[test]
    fn ftfy_unescape_matches_its_docstring() {
        // ftfy.fixes.unescape_html(...)
        let cases = [
            ("&lt;tag&gt;", "<tag>"),
            ("&Jscr;ohn &HilbertSpace;ancock", "\u{1D4A5}ohn \u{210B}ancock"),
            ("P&EACUTE;REZ", "P\u{C9}REZ"),
            ("BUNDESSTRA&SZLIG;E", "BUNDESSTRASSE"),
            ("&ntilde; &Ntilde; &NTILDE; &nTILDE;", "\u{F1} \u{D1} \u{D1} &nTILDE;"),
            ("&amp &#65 &#x41; &#65x;", "&amp &#65 A &#65x;"),
            ("&AMP; &LTIMES;", "& &LTIMES;"),
            ("&#59; &#x3b;", "&#59; &#x3b;"),
        ];
        for (input, expected) in cases {
            assert_eq!(html::unescape_ftfy(input), expected, "{input:?}");
        }
    }

    #[test]
    fn ftfy_character_fixes() {
        // uncurl_quotes(fix_character_width(fix_latin_ligatures(fix_c1_controls(text))))
        assert_eq!(
            ftfy::translate_characters("\u{FF2C}\u{FF2F}\u{3000}\u{FB01}sh \u{93}q\u{94} \u{149}"),
            "LO fish \"q\" 'n"
        );
        assert_eq!(
            ftfy::translate_characters("\u{FF35}\u{FF80}\u{FF70}\u{FF9D}"),
            "U\u{30BF}\u{30FC}\u{30F3}"
        );
        assert_eq!(ftfy::latin_ligature('\u{FB03}'), Some("ffi"));
        assert_eq!(ftfy::straight_quote('\u{201F}'), '"');
        // ftfy.fixes.fix_line_breaks(...), ftfy.fixes.remove_control_chars(...)
        assert_eq!(ftfy::unify_line_breaks("a\r\r\nb\u{2028}c"), "a\n\nb\nc");
        assert_eq!(ftfy::remove_control_characters("a\u{0}\u{7}\tb\u{FEFF}"), "a\tb");
    }

    #[test]
    fn ftfy_fix_text_repeats_until_stable_and_stops_unescaping_after_a_less_than() {
        // ftfy.fix_text(text, fix_encoding=False)
        assert_eq!(ftfy::fix_text("&amp;amp;lt;"), "<");
        assert_eq!(ftfy::fix_text("a &amp;amp; <"), "a &amp;amp; <");
        assert_eq!(ftfy::fix_text("&amp;\n<\n&amp;"), "&\n<\n&amp;");
        assert_eq!(ftfy::fix_text("\u{1B}[31mred\u{1B}[0m"), "red");
        assert_eq!(ftfy::fix_text("cafe\u{301}"), "caf\u{E9}");
    }

    #[test]
    fn clean_text_collapses_space_and_lowers() {
        // open_clip.tokenizer._clean_lower(text)
        assert_eq!(clean_text("  A\tB\r\n&amp;amp;  \u{3A3}\u{391}\u{3A3} "), "a b & \u{3C3}\u{3B1}\u{3C2}");
        assert_eq!(clean_text(" \u{A0} "), "");
    }

    #[test]
    fn pre_tokenizer_follows_python_regex() {
        // regex.findall(SimpleTokenizer().pat, text)
        let pieces: Vec<&str> = PRE_TOKENIZER
            .find_iter("it's a\u{345}b 12 <start_of_text>!! it'\u{17F}")
            .map(|m| m.as_str())
            .collect();
        assert_eq!(pieces, ["it", "'s", "a", "b", "1", "2", "<start_of_text>", "!!", "it", "'\u{17F}"]);
    }
}
