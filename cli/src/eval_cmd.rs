use birdbone_llama::{generate_greedy, perplexity, token_windows, Loaded};

use crate::model_io::{parse_device, parse_kind};

/// Perplexity under the evaluation protocol: the whole text tokenized with the model's
/// tokenizer (no special tokens), non-overlapping windows of `--window` tokens, the first
/// `--windows` of them, each scored independently; perplexity = exp(mean next-token negative
/// log-likelihood over all predicted positions).
#[derive(clap::Args)]
pub struct EvalArgs {
    /// Model folder, or a hub id present in the local Hugging Face cache.
    #[arg(long)]
    pub model: String,
    /// Text file, or the name of one of the exllamav2 files (wiki.utf8, c4.utf8, tiny.utf8).
    #[arg(long, default_value = "wiki.utf8")]
    pub text: String,
    /// Tokens per window.
    #[arg(long, default_value_t = 512)]
    pub window: usize,
    /// Windows evaluated.
    #[arg(long, default_value_t = 64)]
    pub windows: usize,
    /// Windows per forward pass.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
}

pub fn eval(a: EvalArgs) -> anyhow::Result<()> {
    let m = Loaded::load(&a.model, parse_device(&a.device)?, parse_kind(&a.dtype)?)?;
    let text = birdbone_llama::read_text(&a.text)?;
    let windows = token_windows(&m.tokenizer, &text, a.window, a.windows)?;
    let p = perplexity(&m.model, &windows, a.batch)?;
    println!(
        "perplexity {:.3} (mean NLL {:.4} nats over {} tokens, {} windows of {}) in {:.1} s",
        p.ppl, p.nll, p.tokens, p.windows, a.window, p.seconds
    );
    Ok(())
}

#[derive(clap::Args)]
pub struct GenerateArgs {
    /// Model folder, or a cached hub id.
    #[arg(long)]
    pub model: String,
    /// The prompt.
    #[arg(long)]
    pub prompt: String,
    /// Most tokens to add.
    #[arg(long, default_value_t = 32)]
    pub max_new: usize,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
}

pub fn generate(a: GenerateArgs) -> anyhow::Result<()> {
    let m = Loaded::load(&a.model, parse_device(&a.device)?, parse_kind(&a.dtype)?)?;
    let out = generate_greedy(&m, &a.prompt, a.max_new)?;
    println!("{}{}", a.prompt, out);
    Ok(())
}
