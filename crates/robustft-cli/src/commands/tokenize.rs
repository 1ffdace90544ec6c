//! `robustft tokenize`: CLIP BPE token ids, one JSON array per input text.

use robustft::clip::tokenizer::{Tokenizer, CONTEXT_LENGTH, FULL_MERGES};

/// By default each line is `[<|startoftext|>, ids..., <|endoftext|>]`, truncated to the
/// context length with the end token kept last.
#[derive(clap::Args, Debug)]
pub struct TokenizeArgs {
    /// Texts to tokenise.
    #[arg(value_name = "STR", required = true)]
    texts: Vec<String>,

    /// Use only the first N BPE merges (a small model's vocabulary: 512 + N + 2 tokens).
    #[arg(long, default_value_t = FULL_MERGES, value_name = "N")]
    merges: usize,

    /// Context length for truncation and padding.
    #[arg(long, default_value_t = CONTEXT_LENGTH, value_name = "N")]
    context_length: usize,

    /// Print the bare BPE ids: no start/end tokens, no truncation.
    #[arg(long, conflicts_with = "pad")]
    raw: bool,

    /// Zero-pad every row to the context length (the model's input).
    #[arg(long)]
    pad: bool,
}

pub fn run(args: TokenizeArgs) -> anyhow::Result<()> {
    let tokenizer = Tokenizer::with_merges(args.merges)?;
    for text in &args.texts {
        let ids = if args.raw {
            tokenizer.encode(text)
        } else {
            let mut row = tokenizer.tokenize(text, args.context_length)?;
            if !args.pad {
                let end = row.iter().position(|&id| id == tokenizer.eot_token()).map_or(row.len(), |p| p + 1);
                row.truncate(end);
            }
            row
        };
        println!("{}", serde_json::to_string(&ids)?);
    }
    Ok(())
}
