//! The load on each decoder layer: how much the calibration loss grows when that layer alone is
//! pruned, at a few sparsities. Allocators that declare `InputSet::LOAD` (the `birdbone`
//! allocator) read it to keep load-bearing layers dense.
//!
//! The dense hidden states entering every layer are computed once; a measurement of layer `i`
//! then runs only layers `i..` from them, with layer `i` pruned by the caller's `prune` (a
//! pass of the real scorer and strategy) and put back by its `restore` before the next.

use std::{collections::BTreeMap, time::Instant};

use tch::{Kind, Tensor};

use crate::{calib::batches, Llama};

/// The calibration loss of each layer pruned alone.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LayerLoad {
    /// Mean next-token loss (nats) of the dense model.
    pub dense: f64,
    /// The sparsities measured.
    pub levels: Vec<f64>,
    /// `loss[i][k]`: the loss with layer `i` alone pruned at `levels[k]`.
    pub loss: Vec<Vec<f64>>,
    /// Tokens the loss is averaged over.
    pub tokens: u64,
    /// Wall-clock seconds of the whole measurement.
    pub seconds: f64,
}

impl LayerLoad {
    /// The points of layer `i`: the dense model at sparsity 0, then each level.
    pub fn points(&self, i: usize) -> Vec<(f64, f64)> {
        std::iter::once((0.0, self.dense))
            .chain(
                self.levels
                    .iter()
                    .copied()
                    .zip(self.loss[i].iter().copied()),
            )
            .collect()
    }
}

/// Summed next-token negative log-likelihood of the final hidden states `x` for `ids`.
fn nll_sum(model: &Llama, x: &Tensor, ids: &Tensor) -> crate::Result<f64> {
    let logits = model.head(x)?;
    let (b, len, vocab) = (logits.size()[0], logits.size()[1], logits.size()[2]);
    let pred = logits
        .f_narrow(1, 0, len - 1)?
        .f_reshape([b * (len - 1), vocab])?
        .f_to_kind(Kind::Float)?;
    let targets = ids.f_narrow(1, 1, len - 1)?.f_reshape([-1])?;
    Ok(pred
        .f_cross_entropy_loss::<Tensor>(&targets, None, tch::Reduction::Sum, -100, 0.0)?
        .f_double_value(&[])?)
}

/// Measures every layer's load at `levels`. `prune(i, level)` prunes layer `i` alone and returns
/// what `restore` needs to put it back; both run once per layer and level, in order.
pub fn layer_load<U, E: From<crate::Error>>(
    model: &Llama,
    windows: &[Vec<i64>],
    batch: usize,
    levels: &[f64],
    mut prune: impl FnMut(usize, f64) -> Result<U, E>,
    mut restore: impl FnMut(U) -> Result<(), E>,
    progress: &mut dyn FnMut(usize),
) -> Result<LayerLoad, E> {
    let started = Instant::now();
    let _g = tch::no_grad_guard();
    let n = model.num_blocks();
    let ids: Vec<Tensor> = batches(windows, batch, model).collect::<crate::Result<_>>()?;
    let tokens: u64 = ids
        .iter()
        .map(|t| (t.size()[0] * (t.size()[1] - 1)) as u64)
        .sum();
    // inputs[i][b]: the dense hidden states entering layer i for batch b.
    let mut inputs: Vec<Vec<Tensor>> = Vec::with_capacity(n);
    let mut dense = 0.0;
    let mut xs: Vec<Tensor> = ids
        .iter()
        .map(|t| model.embed(t))
        .collect::<crate::Result<_>>()?;
    for i in 0..n {
        inputs.push(xs.iter().map(Tensor::shallow_clone).collect());
        xs = xs
            .iter()
            .map(|x| model.block_forward(i, x, 0, None, None))
            .collect::<crate::Result<_>>()?;
    }
    for (x, t) in xs.iter().zip(&ids) {
        dense += nll_sum(model, x, t)?;
    }
    drop(xs);
    let mut loss = vec![Vec::with_capacity(levels.len()); n];
    for i in 0..n {
        for &level in levels {
            let undo = prune(i, level)?;
            let mut sum = 0.0;
            let mut measured = || -> crate::Result<()> {
                for (x0, t) in inputs[i].iter().zip(&ids) {
                    let mut x = x0.shallow_clone();
                    for j in i..n {
                        x = model.block_forward(j, &x, 0, None, None)?;
                    }
                    sum += nll_sum(model, &x, t)?;
                }
                Ok(())
            };
            let r = measured();
            // Put the layer back whatever the measurement did.
            restore(undo)?;
            r?;
            loss[i].push(sum / tokens as f64);
        }
        progress(i + 1);
    }
    Ok(LayerLoad {
        dense: dense / tokens as f64,
        levels: levels.to_vec(),
        loss,
        tokens,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Per parameter, its layer's `(sparsity, loss)` points.
pub type LoadByParam = BTreeMap<String, Vec<(f64, f64)>>;

/// The load of every layer as the `birdbone` allocator reads it: per parameter of `config`'s
/// selection, its layer's `(sparsity, loss)` points. Each layer is pruned alone by `pruner`'s
/// scorer and strategy ([`birdbone_tch::Pruner::trial`]) at each of `levels`, with `stats` for
/// scorers that read them, and put back bit for bit before the next.
#[allow(clippy::too_many_arguments)]
pub fn load_by_param<E>(
    model: &Llama,
    pruner: &mut birdbone_tch::Pruner,
    windows: &[Vec<i64>],
    batch: usize,
    levels: &[f64],
    config: &birdbone_tch::PassConfig,
    stats: &birdbone_tch::ActivationStats,
    progress: &mut dyn FnMut(usize),
) -> Result<(LayerLoad, LoadByParam), E>
where
    E: From<crate::Error> + From<birdbone_tch::Error>,
{
    let vs = model.var_store();
    let names = |i: usize| -> Vec<String> {
        model
            .block_linear_names(i)
            .into_iter()
            .filter(|n| config.filter.selects(n, &[1, 1]))
            .collect()
    };
    let load = layer_load(
        model,
        windows,
        batch,
        levels,
        |i, level| -> Result<Option<birdbone_tch::Journal>, E> {
            let include = names(i);
            if include.is_empty() {
                return Ok(None);
            }
            let at = birdbone_tch::PassConfig {
                sparsity: level,
                ..config.clone()
            };
            let inputs = birdbone_tch::PassInputs {
                stats: Some(stats),
                ..Default::default()
            };
            Ok(Some(pruner.trial(vs, include, &at, inputs)?))
        },
        |journal| {
            if let Some(j) = journal {
                j.restore()?;
            }
            Ok(())
        },
        progress,
    )?;
    let mut by_param = BTreeMap::new();
    for i in 0..model.num_blocks() {
        for n in names(i) {
            by_param.insert(n, load.points(i));
        }
    }
    Ok((load, by_param))
}
