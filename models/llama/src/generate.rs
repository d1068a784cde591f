use tch::Tensor;

use crate::{load::Loaded, model::KvCache, Error, Result};

/// Greedy continuation of `prompt` by up to `max_new` tokens (stopping at an end-of-sequence
/// token), with a KV cache. Returns the new text only.
pub fn generate_greedy(m: &Loaded, prompt: &str, max_new: usize) -> Result<String> {
    let _g = tch::no_grad_guard();
    let mut ids = m.encode(prompt)?;
    if ids.is_empty() {
        return Err(Error::Invalid(
            "the prompt is empty (no tokens): give some text to continue".into(),
        ));
    }
    let eos = m.model.config.eos_ids();
    let mut cache = KvCache::new();
    let mut next = Tensor::from_slice(&ids)
        .f_unsqueeze(0)?
        .f_to_device(m.model.device())?;
    let prompt_len = ids.len();
    for _ in 0..max_new {
        let logits = m.model.forward(&next, Some(&mut cache), None)?;
        let last = logits
            .f_select(1, -1)?
            .f_argmax(-1, false)?
            .f_int64_value(&[0])?;
        if eos.contains(&last) {
            break;
        }
        ids.push(last);
        next = Tensor::from_slice(&[last])
            .f_unsqueeze(0)?
            .f_to_device(m.model.device())?;
    }
    m.decode(&ids[prompt_len..])
}
