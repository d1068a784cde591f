use serde_json::json;

use crate::common::{self, EvalArgs, ModelArgs};

/// Perplexity under the evaluation protocol: the whole text tokenized with the model's
/// tokenizer (no special tokens), non-overlapping windows of `--window` tokens, the first
/// `--windows` of them, each scored independently; perplexity = exp(mean next-token negative
/// log-likelihood over all predicted positions).
#[derive(clap::Args)]
pub struct EvalCmd {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub eval: EvalArgs,
    /// Print the result as JSON (docs/cli.md) instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn eval(a: EvalCmd) -> anyhow::Result<()> {
    a.eval.validate()?;
    let m = a.model.load()?;
    let windows = a.eval.windows_of(&m)?;
    let p = common::perplexity(&m, &windows, a.eval.batch, "eval")?;
    if a.json {
        return common::print_json(&json!({
            "command": "eval",
            "model": a.model.model,
            "source": m.dir,
            "text": a.eval.text,
            "window": a.eval.window,
            "windows": p.windows,
            "tokens": p.tokens,
            "perplexity": p.ppl,
            "nll": p.nll,
            "device": format!("{:?}", m.model.device()),
            "dtype": a.model.dtype,
            "seconds": p.seconds,
        }));
    }
    println!(
        "perplexity {:.4} (mean NLL {:.5} nats over {} tokens, {} windows of {}) in {:.1} s",
        p.ppl, p.nll, p.tokens, p.windows, a.eval.window, p.seconds
    );
    Ok(())
}

#[derive(clap::Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The prompt.
    #[arg(long)]
    pub prompt: String,
    /// Most tokens to add.
    #[arg(long, default_value_t = 32)]
    pub max_new: usize,
}

pub fn generate(a: GenerateArgs) -> anyhow::Result<()> {
    let m = a.model.load()?;
    let out = birdbone_llama::generate_greedy(&m, &a.prompt, a.max_new)?;
    println!("{}{}", a.prompt, out);
    Ok(())
}
