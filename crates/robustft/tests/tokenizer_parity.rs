//! Parity of `robustft::clip::tokenizer` with open_clip's `SimpleTokenizer` (OpenAI CLIP's
//! BPE tokenizer), checked against `fixtures/tokenizer/cases.json`, which
//! `scripts/fixtures/tokenizer.py` writes. In the Python snippets below, `full` is
//! `SimpleTokenizer(bpe_path="assets/bpe_simple_vocab_16e6.txt.gz")` and `reduced` is
//! `SimpleTokenizer(bpe_path=<header + first 1000 merges>)`.

use std::sync::LazyLock;

use robustft::clip::tokenizer::{clean_text, Tokenizer, TokenizerError, CONTEXT_LENGTH, FULL_MERGES};
use serde_json::Value;

const FIXTURE_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/tokenizer/cases.json");
const REDUCED_MERGES: usize = 1000;
/// Failures printed before giving up, so one bug does not flood the output.
const MAX_REPORTED: usize = 20;

static FIXTURE: LazyLock<Value> = LazyLock::new(|| {
    let text = std::fs::read_to_string(FIXTURE_PATH).unwrap_or_else(|error| {
        panic!("cannot read {FIXTURE_PATH} (run scripts/fixtures/tokenizer.py): {error}")
    });
    serde_json::from_str(&text).expect("the tokenizer fixture is valid JSON")
});
static FULL: LazyLock<Tokenizer> =
    LazyLock::new(|| Tokenizer::openai().expect("the bundled vocabulary loads"));
static REDUCED: LazyLock<Tokenizer> =
    LazyLock::new(|| Tokenizer::with_merges(REDUCED_MERGES).expect("the bundled vocabulary loads"));

fn records(section: &str) -> &'static [Value] {
    FIXTURE[section].as_array().unwrap_or_else(|| panic!("fixture has no {section:?} array"))
}

fn text_of(record: &Value) -> &str {
    record["text"].as_str().expect("record has a text")
}

fn ids_of(value: &Value) -> Vec<u32> {
    value
        .as_array()
        .expect("an id list")
        .iter()
        .map(|id| u32::try_from(id.as_u64().expect("an id")).expect("a u32 id"))
        .collect()
}

fn padded(mut row: Vec<u32>, context_length: usize) -> Vec<u32> {
    row.resize(context_length, 0);
    row
}

/// Collects mismatches and fails once with the first few, each naming its input.
#[derive(Default)]
struct Mismatches {
    count: usize,
    report: String,
}

impl Mismatches {
    fn check<T: PartialEq + std::fmt::Debug>(&mut self, input: &str, expected: T, got: T) {
        if expected != got {
            self.count += 1;
            if self.count <= MAX_REPORTED {
                self.report +=
                    &format!("\n  input:    {input:?}\n  expected: {expected:?}\n  got:      {got:?}\n");
            }
        }
    }

    fn assert_none(self, what: &str, total: usize) {
        assert!(
            self.count == 0,
            "{what}: {} of {total} differ from the reference; first ones:{}",
            self.count,
            self.report
        );
    }
}

/// The fixture's vocabulary record: `{"merges", "vocab_size", "sot", "eot"}`.
fn vocabulary(name: &str) -> &'static Value {
    &FIXTURE["vocabularies"][name]
}

fn as_usize(value: &Value) -> usize {
    usize::try_from(value.as_u64().expect("a number")).expect("fits usize")
}

#[test]
fn vocab_sizes_and_special_tokens_match() {
    for (name, tokenizer, merges) in [("full", &*FULL, FULL_MERGES), ("reduced", &*REDUCED, REDUCED_MERGES)] {
        let reference = vocabulary(name);
        // tok = SimpleTokenizer(bpe_path=...); len(merges used)
        assert_eq!(tokenizer.merges(), merges, "{name}");
        assert_eq!(as_usize(&reference["merges"]), merges, "{name}");
        // tok.vocab_size
        assert_eq!(tokenizer.vocab_size(), as_usize(&reference["vocab_size"]), "{name}");
        // tok.sot_token_id
        assert_eq!(u64::from(tokenizer.sot_token()), reference["sot"].as_u64().unwrap(), "{name}");
        // tok.eot_token_id
        assert_eq!(u64::from(tokenizer.eot_token()), reference["eot"].as_u64().unwrap(), "{name}");
    }
    // full.vocab_size, full.sot_token_id, full.eot_token_id == 49408, 49406, 49407
    assert_eq!((FULL.vocab_size(), FULL.sot_token(), FULL.eot_token()), (49408, 49406, 49407));
    // the fixture rows are 77 long: open_clip.tokenizer.DEFAULT_CONTEXT_LENGTH
    assert_eq!(as_usize(&FIXTURE["context_length"]), CONTEXT_LENGTH);
}

#[test]
fn fixture_is_large_and_filtered() {
    // len(cases) after dropping the strings ftfy.fix_text's mojibake repair would change
    assert!(records("cases").len() >= 600, "{}", records("cases").len());
    // ftfy.fix_text(s) != ftfy.fix_text(s, fix_encoding=False) for 40 composed strings
    assert_eq!(FIXTURE["excluded_mojibake"]["cases"].as_u64(), Some(40));
}

#[test]
fn cleaned_text_matches_open_clip() {
    let cases = records("cases").iter().chain(records("clean_only"));
    let mut mismatches = Mismatches::default();
    let mut total = 0;
    for record in cases {
        total += 1;
        // full.clean_fn(text), i.e. whitespace_clean(basic_clean(text)).lower()
        let expected = record["clean"].as_str().expect("record has a clean text");
        mismatches.check(text_of(record), expected.to_owned(), clean_text(text_of(record)));
    }
    mismatches.assert_none("clean_text", total);
}

fn check_encode(name: &str, tokenizer: &Tokenizer) {
    let cases = records("cases");
    let mut mismatches = Mismatches::default();
    for record in cases {
        // tok.encode(text)
        let expected = ids_of(&record[name]["ids"]);
        mismatches.check(text_of(record), expected, tokenizer.encode(text_of(record)));
    }
    mismatches.assert_none(&format!("encode with the {name} vocabulary"), cases.len());
}

#[test]
fn encode_matches_open_clip_with_the_full_vocabulary() {
    check_encode("full", &FULL);
}

#[test]
fn encode_matches_open_clip_with_1000_merges() {
    check_encode("reduced", &REDUCED);
}

fn check_tokenize(name: &str, tokenizer: &Tokenizer) {
    let cases = records("cases");
    let mut mismatches = Mismatches::default();
    for record in cases {
        // tok([text], 77)[0].tolist(); the fixture drops the trailing zeros
        let expected = padded(ids_of(&record[name]["tokens77"]), CONTEXT_LENGTH);
        let got = tokenizer.tokenize(text_of(record), CONTEXT_LENGTH).expect("77 is a valid context length");
        mismatches.check(text_of(record), expected, got);
    }
    mismatches.assert_none(&format!("tokenize with the {name} vocabulary"), cases.len());
}

#[test]
fn tokenize_matches_open_clip_with_the_full_vocabulary() {
    check_tokenize("full", &FULL);
}

#[test]
fn tokenize_matches_open_clip_with_1000_merges() {
    check_tokenize("reduced", &REDUCED);
}

#[test]
fn tokenize_batch_matches_open_clip() {
    let cases = records("cases");
    let texts: Vec<&str> = cases.iter().map(text_of).collect();
    let rows = FULL.tokenize_batch(&texts, CONTEXT_LENGTH).expect("77 is a valid context length");
    assert_eq!(rows.len(), cases.len());
    for (record, row) in cases.iter().zip(rows) {
        // full(texts, 77)[i].tolist()
        let expected = padded(ids_of(&record["full"]["tokens77"]), CONTEXT_LENGTH);
        assert_eq!(row, expected, "text: {:?}", text_of(record));
    }
}

#[test]
fn short_contexts_match_open_clip() {
    for record in records("short_context") {
        let context_length = as_usize(&record["context_length"]);
        // full([text], context_length)[0].tolist(), trailing zeros dropped
        let expected = padded(ids_of(&record["full"]), context_length);
        let got = FULL.tokenize(text_of(record), context_length).expect("n >= 2");
        assert_eq!(got, expected, "text {:?}, n = {context_length}", text_of(record));
    }
}

#[test]
fn truncation_keeps_eot_last() {
    let long = "a photo of a dog ".repeat(40);
    // len(full.encode(long)) > 75, so full([long])[0] is cut to 77 with eot at the end
    assert!(FULL.encode(&long).len() > CONTEXT_LENGTH);
    for tokenizer in [&*FULL, &*REDUCED] {
        let row = tokenizer.tokenize(&long, CONTEXT_LENGTH).unwrap();
        // tok([long])[0][0] == tok.sot_token_id
        assert_eq!(row[0], tokenizer.sot_token());
        // tok([long])[0][-1] == tok.eot_token_id
        assert_eq!(row[CONTEXT_LENGTH - 1], tokenizer.eot_token());
        // tok([long])[0][1:76].tolist() == tok.encode(long)[:75]
        assert_eq!(&row[1..CONTEXT_LENGTH - 1], &tokenizer.encode(&long)[..CONTEXT_LENGTH - 2]);
    }
}

#[test]
fn decode_matches_open_clip() {
    let mut mismatches = Mismatches::default();
    let cases = records("cases");
    for record in cases {
        // full.decode(full.encode(text))
        let expected = record["decoded"].as_str().expect("record has a decoded text");
        let got = FULL.decode(&FULL.encode(text_of(record)));
        mismatches.check(text_of(record), expected.to_owned(), got);
    }
    mismatches.assert_none("decode(encode(text))", cases.len());

    for record in records("decode_only") {
        let ids = ids_of(&record["ids"]);
        // full.decode(ids), many of them not valid UTF-8 (errors="replace")
        let expected = record["decoded"].as_str().expect("record has a decoded text");
        assert_eq!(FULL.decode(&ids), expected, "ids: {ids:?}");
    }
}

#[test]
fn decode_of_a_few_texts() {
    // full.decode(full.encode("A Photo of a DOG.")) == "a photo of a dog . "
    assert_eq!(FULL.decode(&FULL.encode("A Photo of a DOG.")), "a photo of a dog . ");
    // full.decode([full.sot_token_id, full.eot_token_id]) == "<start_of_text><end_of_text>"
    assert_eq!(FULL.decode(&[FULL.sot_token(), FULL.eot_token()]), "<start_of_text><end_of_text>");
    // reduced.decode(reduced.encode("naïve café")) == "naïve café "
    assert_eq!(REDUCED.decode(&REDUCED.encode("naïve café")), "naïve café ");
    // full.decode([]) == ""
    assert_eq!(FULL.decode(&[]), "");
    // Python raises KeyError for an unknown id; the port substitutes U+FFFD.
    assert_eq!(FULL.decode(&[49408]), "\u{FFFD}");
}

#[test]
fn literal_special_tokens_use_open_clip_spelling() {
    // full.encode("<start_of_text>a<end_of_text>") == [49406, 320, 49407]
    assert_eq!(FULL.encode("<start_of_text>a<end_of_text>"), vec![49406, 320, 49407]);
    // OpenAI's spelling is ordinary text for open_clip: 49406 not in full.encode("<|startoftext|>")
    assert!(!FULL.encode("<|startoftext|>").contains(&FULL.sot_token()));
}

#[test]
fn too_many_merges_is_an_error() {
    // SimpleTokenizer slices merges[1:48895]: there is no 48895th merge to ask for
    match Tokenizer::with_merges(FULL_MERGES + 1) {
        Err(TokenizerError::TooManyMerges { requested, available }) => {
            assert_eq!((requested, available), (FULL_MERGES + 1, FULL_MERGES))
        }
        other => panic!("expected TooManyMerges, got {other:?}"),
    }
    // a tokenizer without merges still has 512 byte symbols and the two special tokens
    let bytes_only = Tokenizer::with_merges(0).unwrap();
    assert_eq!((bytes_only.vocab_size(), bytes_only.sot_token()), (514, 512));
}

#[test]
fn a_context_without_room_for_both_special_tokens_is_an_error() {
    for context_length in [0, 1] {
        // open_clip returns [eot] for context_length=1 and treats 0 as "use the default"
        assert!(matches!(
            FULL.tokenize("a dog", context_length),
            Err(TokenizerError::ContextTooShort(n)) if n == context_length
        ));
        assert!(matches!(
            FULL.tokenize_batch(&["a dog"], context_length),
            Err(TokenizerError::ContextTooShort(_))
        ));
    }
    // full([""], 2)[0].tolist() == [49406, 49407]
    assert_eq!(FULL.tokenize("", 2).unwrap(), vec![49406, 49407]);
}
