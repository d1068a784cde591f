//! The built-in pruning paths called directly on the host's selection and apply machinery, with
//! no plugin in between. They exist to measure what the plugin boundary costs: the benchmark runs
//! each path both ways, on the same weights.

use tch::Tensor;

use crate::{
    engine::{self, Count, FiniteCheck, PruneItem, Rule, Scores},
    error::{HostError, Result},
};

/// A built-in path.
pub enum DirectPath<'a> {
    /// `magnitude` + `global`.
    GlobalMagnitude,
    /// `magnitude` + `layerwise` (scope tensor).
    LayerwiseMagnitude,
    /// `|W| · scale` per output row (`wanda` + `layerwise scope=row`), one f32 scale per param.
    PerRowScaled(&'a [Tensor]),
    /// `magnitude` + `nm`.
    Nm(u32, u32),
}

fn exact(s: f64, n: u64) -> u64 {
    ((s * n as f64).round() as u64).min(n)
}

fn checked(names: &[&String], checks: Vec<FiniteCheck>) -> Result<()> {
    for (name, c) in names.iter().zip(checks) {
        if let Some(index) = c.get()? {
            return Err(HostError::NonFinite {
                what: "weight",
                param: name.to_string(),
                index,
            }
            .into());
        }
    }
    Ok(())
}

/// Plans and commits `path` over `params` in place; returns the number of weights pruned.
pub fn prune(
    params: &[(String, Tensor)],
    path: DirectPath<'_>,
    sparsity: f64,
    keep_masks: bool,
) -> Result<u64> {
    let _g = tch::no_grad_guard();
    let Some(first) = params.first() else {
        birdbone_host::bail!("no parameters")
    };
    let device = first.1.device();
    let names: Vec<&String> = params.iter().map(|(n, _)| n).collect();
    let mag = |t: &Tensor, scale: Option<&Tensor>| Scores::Magnitude {
        weight: t.shallow_clone(),
        scale: scale.map(|s| s.shallow_clone()),
    };
    let plain = || params.iter().map(|(_, t)| mag(t, None)).collect::<Vec<_>>();
    let (scores, rules): (Vec<Scores>, Vec<Rule>) = match path {
        DirectPath::GlobalMagnitude => {
            let total: u64 = params.iter().map(|(_, t)| t.numel() as u64).sum();
            let scores = plain();
            let mut sel = engine::global_selector(device, exact(sparsity, total), params.len())?;
            for (i, s) in scores.iter().enumerate() {
                sel.feed_high(i, s)?;
            }
            if sel.needs_low_pass()? {
                for (i, s) in scores.iter().enumerate() {
                    sel.feed_low(i, s)?;
                }
            }
            let rules = sel
                .finish()?
                .params
                .into_iter()
                .map(Rule::Threshold)
                .collect();
            (scores, rules)
        }
        DirectPath::LayerwiseMagnitude => {
            let scores = plain();
            let ks: Vec<u64> = params
                .iter()
                .map(|(_, t)| exact(sparsity, t.numel() as u64))
                .collect();
            let quotas = engine::select_each(&scores, &ks).map_err(|(_, e)| e)?;
            (scores, quotas.into_iter().map(Rule::Threshold).collect())
        }
        DirectPath::PerRowScaled(scales) => {
            let scores: Vec<Scores> = params
                .iter()
                .zip(scales)
                .map(|((_, t), s)| Ok(mag(t, Some(&engine::aligned_scale(s)?))))
                .collect::<Result<_>>()?;
            let ks: Vec<u64> = scores.iter().map(|s| exact(sparsity, s.cols())).collect();
            let (rows, checks) =
                engine::select_rows(&scores, &ks, &vec![0; ks.len()]).map_err(|(_, e)| e)?;
            checked(&names, checks)?;
            (scores, rows.into_iter().map(Rule::PerRow).collect())
        }
        DirectPath::Nm(n, m) => {
            let weights: Vec<&Tensor> = params.iter().map(|(_, t)| t).collect();
            checked(&names, engine::find_non_finite(&weights)?)?;
            (plain(), params.iter().map(|_| Rule::NM { n, m }).collect())
        }
    };
    let items: Vec<PruneItem<'_>> = params
        .iter()
        .zip(&scores)
        .zip(&rules)
        .map(|(((_, weight), scores), rule)| PruneItem {
            weight,
            scores,
            rule,
        })
        .collect();
    let counts: Vec<Count> = engine::prune_many(&items, keep_masks)?
        .into_iter()
        .map(|(_, c)| c)
        .collect();
    counts.iter().map(Count::get).sum()
}
