use birdbone_select::{
    self as sel, zero_pruned, BitMask, Elems, ElemsMut, GlobalSelection, GlobalSelector,
    ScoreSource,
};
use tch::{Kind, Tensor};

use super::{GlobalSel, RowSel, Rule, Scores};
use crate::error::{Error, HostError, Result};

fn not_contiguous(op: &'static str) -> Error {
    HostError::Shape {
        op,
        message: "the CPU path needs contiguous tensors".into(),
    }
    .into()
}

/// The elements of a contiguous CPU tensor, borrowed.
fn elems(t: &Tensor) -> Result<Elems<'_>> {
    if !t.is_contiguous() {
        return Err(not_contiguous("read"));
    }
    let n = t.numel();
    let p = t.data_ptr();
    // SAFETY: a contiguous CPU tensor of `n` elements of this kind starts at `p`, and `t`
    // (borrowed for the slice's lifetime) keeps the storage alive.
    unsafe {
        Ok(match t.kind() {
            Kind::BFloat16 => Elems::BF16(std::slice::from_raw_parts(p as *const u16, n)),
            Kind::Half => Elems::F16(std::slice::from_raw_parts(p as *const u16, n)),
            Kind::Float => Elems::F32(std::slice::from_raw_parts(p as *const f32, n)),
            k => {
                return Err(HostError::Shape {
                    op: "score",
                    message: format!("element type {k:?} cannot be scored (f32, f16 or bf16)"),
                }
                .into())
            }
        })
    }
}

/// The elements of a contiguous CPU tensor, writable.
fn elems_mut(t: &Tensor) -> Result<ElemsMut<'_>> {
    if !t.is_contiguous() {
        return Err(not_contiguous("write"));
    }
    let n = t.numel();
    let p = t.data_ptr();
    // SAFETY: as in `elems`; the host serialises writers (the pass holds the weights).
    unsafe {
        Ok(match t.kind() {
            Kind::BFloat16 => ElemsMut::BF16(std::slice::from_raw_parts_mut(p as *mut u16, n)),
            Kind::Half => ElemsMut::F16(std::slice::from_raw_parts_mut(p as *mut u16, n)),
            Kind::Float => ElemsMut::F32(std::slice::from_raw_parts_mut(p as *mut f32, n)),
            k => {
                return Err(HostError::Shape {
                    op: "prune",
                    message: format!("element type {k:?} cannot be pruned (f32, f16 or bf16)"),
                }
                .into())
            }
        })
    }
}

fn source<'a>(scores: &'a Scores, scale: &'a mut Vec<f32>) -> Result<ScoreSource<'a>> {
    Ok(match scores {
        Scores::Magnitude {
            weight,
            scale: None,
        } => ScoreSource::Magnitude(elems(weight)?),
        Scores::Magnitude {
            weight,
            scale: Some(s),
        } => {
            *scale = Vec::<f32>::try_from(s)?;
            ScoreSource::ScaledMagnitude(elems(weight)?, scale)
        }
        Scores::Dense(t) => ScoreSource::Dense(elems(t)?),
    })
}

fn select_err(e: sel::SelectError) -> Error {
    match e {
        sel::SelectError::NonFinite { index, .. } => HostError::NonFinite {
            what: "score",
            param: String::new(),
            index: index as u64,
        }
        .into(),
        other => HostError::Invalid(other.to_string()).into(),
    }
}

pub(crate) struct CpuGlobal {
    sel: GlobalSelector,
    bad: Option<usize>,
}

impl CpuGlobal {
    pub fn new(k: u64, params: usize) -> CpuGlobal {
        CpuGlobal {
            sel: GlobalSelector::new(k, params),
            bad: None,
        }
    }
}

impl GlobalSel for CpuGlobal {
    fn feed_high(&mut self, p: usize, scores: &Scores) -> Result<()> {
        let mut scale = Vec::new();
        let r = self.sel.feed_high(p, &source(scores, &mut scale)?);
        if r.is_err() {
            self.bad = Some(p);
        }
        r.map_err(select_err)
    }
    fn needs_low_pass(&mut self) -> Result<bool> {
        self.sel.needs_low_pass().map_err(select_err)
    }
    fn feed_low(&mut self, p: usize, scores: &Scores) -> Result<()> {
        let mut scale = Vec::new();
        let r = self.sel.feed_low(p, &source(scores, &mut scale)?);
        if r.is_err() {
            self.bad = Some(p);
        }
        r.map_err(select_err)
    }
    fn finish(self: Box<Self>) -> Result<GlobalSelection> {
        Ok(self.sel.finish())
    }
    fn bad_param(&self) -> Option<usize> {
        self.bad
    }
}

pub(crate) fn select_per_row(scores: &Scores, k: u64) -> Result<RowSel> {
    let mut scale = Vec::new();
    let t = sel::select_per_row(&source(scores, &mut scale)?, scores.cols() as usize, k)
        .map_err(select_err)?;
    let keys: Vec<i32> = t.keys.iter().map(|&k| k as i32).collect();
    let take: Vec<i32> = t.take.iter().map(|&k| k as i32).collect();
    // Ties present matter to the CUDA kernels only; the CPU rule reads `take` alone.
    let ties = Tensor::zeros([keys.len() as i64], (Kind::Int, tch::Device::Cpu));
    Ok(RowSel::Thresholds {
        keys: Tensor::from_slice(&keys),
        take: Tensor::from_slice(&take),
        ties,
    })
}

pub(crate) fn build_mask(scores: &Scores, rule: &Rule) -> Result<(Tensor, u64)> {
    let mut scale = Vec::new();
    let src = source(scores, &mut scale)?;
    let mut mask = BitMask::all_kept(src.len());
    let cols = scores.cols() as usize;
    let pruned = match rule {
        Rule::Threshold(q) => sel::apply_threshold(&src, q, &mut mask),
        Rule::PerRow(RowSel::Thresholds { keys, take, .. }) => {
            let t = sel::RowThresholds {
                keys: Vec::<i32>::try_from(keys)?
                    .into_iter()
                    .map(|k| k as u32)
                    .collect(),
                take: Vec::<i32>::try_from(take)?
                    .into_iter()
                    .map(|k| k as u32)
                    .collect(),
            };
            sel::apply_per_row(&src, cols, &t, &mut mask)
        }
        Rule::PerRow(RowSel::AtApply { k }) => sel::select_per_row(&src, cols, *k)
            .and_then(|t| sel::apply_per_row(&src, cols, &t, &mut mask)),
        Rule::NM { n, m } => sel::apply_nm(&src, cols, *n, *m, &mut mask),
    }
    .map_err(select_err)?;
    Ok((Tensor::from_slice(mask.bytes()), pruned))
}

pub(crate) fn find_non_finite(t: &Tensor) -> Result<Option<u64>> {
    let c;
    let t = if t.is_contiguous() {
        t
    } else {
        c = t.contiguous();
        &c
    };
    let e = elems(t)?;
    Ok((0..e.len())
        .find(|&i| !e.get(i).is_finite())
        .map(|i| i as u64))
}

pub(crate) fn apply_mask(weight: &Tensor, mask: &Tensor) -> Result<u64> {
    let bytes = Vec::<u8>::try_from(mask)?;
    if weight.is_contiguous() {
        return Ok(zero_pruned(&bytes, elems_mut(weight)?));
    }
    // A strided weight (a transposed view, say): zero it through libtorch, still in place.
    let _g = tch::no_grad_guard();
    let keep = super::unpack_keep(mask, weight.numel() as i64)?.f_reshape(weight.size())?;
    let pruned = keep.numel() as i64 - keep.f_sum(Kind::Int64)?.int64_value(&[]);
    let _ = weight
        .shallow_clone()
        .f_masked_fill_(&keep.f_logical_not()?, 0.0)?;
    Ok(pruned as u64)
}
