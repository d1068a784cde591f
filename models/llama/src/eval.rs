use std::time::Instant;

use tch::{Kind, Tensor};
use tokenizers::Tokenizer;

use crate::{model::Llama, Error, Result};

/// The evaluation protocol's knobs. Defaults: windows of 512 tokens, the first 64.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct EvalConfig {
    /// Tokens per window.
    pub window: usize,
    /// Windows evaluated (the first ones of the text).
    pub windows: usize,
    /// Windows per forward pass.
    pub batch: usize,
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig {
            window: 512,
            windows: 64,
            batch: 4,
        }
    }
}

/// A perplexity measurement.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Perplexity {
    /// exp(mean negative log-likelihood).
    pub ppl: f64,
    /// Mean negative log-likelihood per predicted token (nats).
    pub nll: f64,
    /// Tokens predicted.
    pub tokens: u64,
    /// Windows evaluated.
    pub windows: usize,
    /// Seconds taken.
    pub seconds: f64,
}

/// The first `count` non-overlapping windows of `window` tokens of `text`, tokenized as a whole
/// without special tokens. (A prefix of the text many times longer than the windows need is
/// tokenized: byte-level BPE is local, so its first tokens are those of the whole text.)
pub fn token_windows(
    tokenizer: &Tokenizer,
    text: &str,
    window: usize,
    count: usize,
) -> Result<Vec<Vec<i64>>> {
    let need = window * count;
    let mut take = (need * 8).max(4096);
    loop {
        let prefix: &str = if take >= text.len() {
            text
        } else {
            let mut end = take;
            while !text.is_char_boundary(end) {
                end += 1;
            }
            &text[..end]
        };
        let ids = tokenizer
            .encode(prefix, false)
            .map_err(|e| Error::Tokenizer(e.to_string()))?
            .get_ids()
            .to_vec();
        // Drop the last few tokens of a prefix: the cut may have split a word.
        let usable = if prefix.len() < text.len() {
            ids.len().saturating_sub(8)
        } else {
            ids.len()
        };
        if usable >= need || prefix.len() == text.len() {
            let windows: Vec<Vec<i64>> = ids[..usable]
                .chunks_exact(window)
                .take(count)
                .map(|w| w.iter().map(|&i| i as i64).collect())
                .collect();
            if windows.len() < count {
                return Err(Error::Invalid(format!(
                    "the text has {} tokens: fewer than {count} windows of {window}",
                    ids.len()
                )));
            }
            return Ok(windows);
        }
        take *= 2;
    }
}

/// Perplexity of `model` on `windows`, each scored independently: exp of the mean negative
/// log-likelihood over every predicted position (the first token of a window is context only).
pub fn perplexity(model: &Llama, windows: &[Vec<i64>], batch: usize) -> Result<Perplexity> {
    perplexity_with(model, windows, batch, &mut |_| {})
}

/// [`perplexity`], calling `progress(windows done)` after every forward pass.
pub fn perplexity_with(
    model: &Llama,
    windows: &[Vec<i64>],
    batch: usize,
    progress: &mut dyn FnMut(usize),
) -> Result<Perplexity> {
    let started = Instant::now();
    let _g = tch::no_grad_guard();
    let mut nll = 0f64;
    let mut tokens = 0u64;
    for chunk in windows.chunks(batch.max(1)) {
        let flat: Vec<i64> = chunk.iter().flatten().copied().collect();
        let len = chunk[0].len() as i64;
        let ids = Tensor::from_slice(&flat)
            .f_view([chunk.len() as i64, len])?
            .f_to_device(model.device())?;
        let logits = model.forward(&ids, None, None)?;
        let logp = logits
            .f_narrow(1, 0, len - 1)?
            .f_log_softmax(-1, Kind::Float)?;
        let targets = ids.f_narrow(1, 1, len - 1)?.f_unsqueeze(-1)?;
        let picked = logp.f_gather(-1, &targets, false)?;
        nll -= picked.f_sum(Kind::Double)?.f_double_value(&[])?;
        tokens += (chunk.len() as u64) * (len as u64 - 1);
        progress(tokens as usize / (len as usize - 1));
    }
    let mean = nll / tokens as f64;
    Ok(Perplexity {
        ppl: mean.exp(),
        nll: mean,
        tokens,
        windows: windows.len(),
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The mean next-token cross-entropy of `model` on `ids` (`[batch, len]`), with the autograd
/// graph kept: the training loss of causal language modelling.
pub fn lm_loss(model: &Llama, ids: &Tensor) -> Result<Tensor> {
    lm_loss_with(model, ids, None)
}

/// [`lm_loss`], recording the Linears' input statistics into `stats` when given (a training
/// loop hands them to a compression callback whose scorer reads activations).
pub fn lm_loss_with(
    model: &Llama,
    ids: &Tensor,
    stats: Option<&mut crate::StatsRecorder>,
) -> Result<Tensor> {
    let len = ids.size()[1];
    let logits = model.forward(ids, None, stats)?;
    let vocab = logits.size()[2];
    let pred = logits.f_narrow(1, 0, len - 1)?.f_reshape([-1, vocab])?;
    let targets = ids.f_narrow(1, 1, len - 1)?.f_reshape([-1])?;
    Ok(pred.f_cross_entropy_loss::<Tensor>(&targets, None, tch::Reduction::Mean, -100, 0.0)?)
}
