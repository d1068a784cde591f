use crate::{keys::key_of, keys::Elems, keys::ScoreSource, mask::BitMask};

/// Why a selection could not be made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SelectError {
    /// A score (or the weight under it) is NaN or infinite.
    #[error("score {index} of parameter {param} is not finite")]
    NonFinite {
        /// Position of the parameter in the scope.
        param: usize,
        /// Flat index of the element.
        index: usize,
    },
    /// More weights were asked for than the scope has.
    #[error("cannot select {k} of {n} weights")]
    TooMany {
        /// Requested.
        k: u64,
        /// Available.
        n: u64,
    },
    /// A shape does not allow the selection.
    #[error("{0}")]
    Shape(String),
}

const BINS: usize = 1 << 16;

/// Calls `f(i, score)` for every element, matching on the source once.
#[inline(always)]
fn for_each_score(src: &ScoreSource<'_>, mut f: impl FnMut(usize, f32)) {
    match *src {
        ScoreSource::Magnitude(Elems::BF16(x)) => x
            .iter()
            .enumerate()
            .for_each(|(i, &b)| f(i, f32::from_bits(((b & 0x7fff) as u32) << 16))),
        ScoreSource::Dense(Elems::BF16(x)) => x
            .iter()
            .enumerate()
            .for_each(|(i, &b)| f(i, f32::from_bits((b as u32) << 16))),
        ScoreSource::Magnitude(Elems::F32(x)) => {
            x.iter().enumerate().for_each(|(i, &v)| f(i, v.abs()))
        }
        ScoreSource::Dense(Elems::F32(x)) => x.iter().enumerate().for_each(|(i, &v)| f(i, v)),
        ScoreSource::ScaledMagnitude(e, scale) => {
            let cols = scale.len();
            match e {
                Elems::BF16(x) => x.chunks(cols).enumerate().for_each(|(r, row)| {
                    row.iter().zip(scale).enumerate().for_each(|(j, (&b, &s))| {
                        f(
                            r * cols + j,
                            f32::from_bits(((b & 0x7fff) as u32) << 16) * s,
                        )
                    })
                }),
                Elems::F32(x) => x.chunks(cols).enumerate().for_each(|(r, row)| {
                    row.iter()
                        .zip(scale)
                        .enumerate()
                        .for_each(|(j, (&v, &s))| f(r * cols + j, v.abs() * s))
                }),
                Elems::F16(_) => (0..e.len()).for_each(|i| f(i, e.get(i).abs() * scale[i % cols])),
            }
        }
        _ => (0..src.len()).for_each(|i| f(i, src.score(i))),
    }
}

/// Keys of all elements, checking finiteness.
fn for_each_key(
    src: &ScoreSource<'_>,
    param: usize,
    mut f: impl FnMut(usize, u32),
) -> Result<(), SelectError> {
    let mut bad = None;
    for_each_score(src, |i, v| {
        if !v.is_finite() {
            bad.get_or_insert(i);
        }
        f(i, key_of(v))
    });
    match bad {
        Some(index) => Err(SelectError::NonFinite { param, index }),
        None => Ok(()),
    }
}

/// One parameter's share of a selection: prune keys below `threshold`, and the first `take` of
/// the `ties` keys equal to it (in flat index order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParamQuota {
    /// The threshold key.
    pub threshold: u32,
    /// Elements with a key below the threshold.
    pub below: u64,
    /// Elements with a key equal to the threshold.
    pub ties: u64,
    /// How many of the ties to prune.
    pub take: u64,
    /// The flat index of the last tie pruned, when the selection has located it already (the
    /// GPU's band selection does, so applying needs no ordered pass); `None`: found by counting
    /// ties in index order while applying. Either way the same `take` ties go.
    pub tie_cut: Option<u64>,
}

impl ParamQuota {
    /// Elements this parameter loses.
    pub fn pruned(&self) -> u64 {
        self.below + self.take
    }
}

/// The outcome of [`select_global`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GlobalSelection {
    /// The threshold key (the key of the k-th smallest score; 0 when k is 0).
    pub threshold: u32,
    /// Elements pruned in all (= k).
    pub pruned: u64,
    /// Elements considered.
    pub considered: u64,
    /// Each parameter's share, in scope order.
    pub params: Vec<ParamQuota>,
}

fn find_bin(hist: &[u64], r: u64) -> (usize, u64) {
    // The bin holding the r-th smallest (r from 1), and how many come before it.
    let mut before = 0u64;
    for (b, &c) in hist.iter().enumerate() {
        if before + c >= r {
            return (b, before);
        }
        before += c;
    }
    unreachable!("r is at most the total count")
}

/// Streaming exact selection of the `k` lowest scores over several parameters together, so
/// that scores can be produced one parameter at a time and dropped.
///
/// Pass 1 ([`GlobalSelector::feed_high`] for every parameter) histograms the high 16 bits of
/// the keys, per parameter. If every key is a bf16 value, that already fixes the threshold.
/// Otherwise pass 2 ([`GlobalSelector::feed_low`], same parameters, same scores) histograms the
/// low 16 bits of the keys in the chosen high bin. Per-parameter counts let ties be shared out
/// in scope order without another pass.
pub struct GlobalSelector {
    k: u64,
    n: u64,
    fit16: bool,
    high: Vec<Vec<u32>>,
    low: Vec<Vec<u32>>,
    high_bin: Option<(usize, u64)>,
}

impl GlobalSelector {
    /// A selector for `k` weights over `params` parameters.
    pub fn new(k: u64, params: usize) -> GlobalSelector {
        GlobalSelector {
            k,
            n: 0,
            fit16: true,
            high: vec![Vec::new(); params],
            low: vec![Vec::new(); params],
            high_bin: None,
        }
    }

    /// Pass 1 for parameter `p`.
    pub fn feed_high(&mut self, p: usize, src: &ScoreSource<'_>) -> Result<(), SelectError> {
        let mut h = vec![0u32; BINS];
        for_each_key(src, p, |_, key| h[(key >> 16) as usize] += 1)?;
        self.high[p] = h;
        self.n += src.len() as u64;
        self.fit16 &= src.keys_fit_16_bits();
        Ok(())
    }

    /// Ends pass 1: whether pass 2 is needed.
    pub fn needs_low_pass(&mut self) -> Result<bool, SelectError> {
        if self.k > self.n {
            return Err(SelectError::TooMany {
                k: self.k,
                n: self.n,
            });
        }
        if self.k == 0 {
            return Ok(false);
        }
        let total: Vec<u64> = (0..BINS)
            .map(|b| self.high.iter().map(|h| h[b] as u64).sum())
            .collect();
        self.high_bin = Some(find_bin(&total, self.k));
        Ok(!self.fit16)
    }

    /// Pass 2 for parameter `p` (the same scores as in pass 1).
    pub fn feed_low(&mut self, p: usize, src: &ScoreSource<'_>) -> Result<(), SelectError> {
        let (hi, _) = self.high_bin.expect("needs_low_pass comes first");
        let mut h = vec![0u32; BINS];
        for_each_key(src, p, |_, key| {
            if (key >> 16) as usize == hi {
                h[(key & 0xffff) as usize] += 1
            }
        })?;
        self.low[p] = h;
        Ok(())
    }

    /// The selection.
    pub fn finish(self) -> GlobalSelection {
        let params_n = self.high.len();
        let Some((hi, before_hi)) = self.high_bin else {
            let params = (0..params_n)
                .map(|_| ParamQuota {
                    threshold: 0,
                    below: 0,
                    ties: 0,
                    take: 0,
                    tie_cut: None,
                })
                .collect();
            return GlobalSelection {
                threshold: 0,
                pruned: 0,
                considered: self.n,
                params,
            };
        };
        let below_hi = |h: &[u32]| h[..hi].iter().map(|&c| c as u64).sum::<u64>();
        let (threshold, below, ties): (u32, Vec<u64>, Vec<u64>) = if self.fit16 {
            let below = self.high.iter().map(|h| below_hi(h)).collect();
            (
                (hi as u32) << 16,
                below,
                self.high.iter().map(|h| h[hi] as u64).collect(),
            )
        } else {
            let lo_total: Vec<u64> = (0..BINS)
                .map(|b| self.low.iter().map(|h| h[b] as u64).sum())
                .collect();
            let (lo, _) = find_bin(&lo_total, self.k - before_hi);
            let below = self
                .high
                .iter()
                .zip(&self.low)
                .map(|(h, l)| below_hi(h) + l[..lo].iter().map(|&c| c as u64).sum::<u64>())
                .collect();
            (
                ((hi as u32) << 16) | lo as u32,
                below,
                self.low.iter().map(|h| h[lo] as u64).collect(),
            )
        };
        let mut remaining = self.k - below.iter().sum::<u64>();
        let mut params = Vec::with_capacity(params_n);
        for p in 0..params_n {
            let take = ties[p].min(remaining);
            remaining -= take;
            params.push(ParamQuota {
                threshold,
                below: below[p],
                ties: ties[p],
                take,
                tie_cut: None,
            });
        }
        debug_assert_eq!(remaining, 0);
        GlobalSelection {
            threshold,
            pruned: self.k,
            considered: self.n,
            params,
        }
    }
}

/// [`GlobalSelector`] over sources all in hand.
pub fn select_global(sources: &[ScoreSource<'_>], k: u64) -> Result<GlobalSelection, SelectError> {
    let mut sel = GlobalSelector::new(k, sources.len());
    for (p, s) in sources.iter().enumerate() {
        sel.feed_high(p, s)?;
    }
    if sel.needs_low_pass()? {
        for (p, s) in sources.iter().enumerate() {
            sel.feed_low(p, s)?;
        }
    }
    Ok(sel.finish())
}

/// Prunes, in `mask`, what `quota` selects of `src`. Returns the number pruned.
pub fn apply_threshold(
    src: &ScoreSource<'_>,
    quota: &ParamQuota,
    mask: &mut BitMask,
) -> Result<u64, SelectError> {
    let mut seen_ties = 0u64;
    let mut pruned = 0u64;
    for_each_key(src, 0, |i, key| {
        let cut = key < quota.threshold
            || (key == quota.threshold
                && match quota.tie_cut {
                    Some(last) => (i as u64) <= last,
                    None => {
                        seen_ties += 1;
                        seen_ties <= quota.take
                    }
                });
        if cut {
            mask.prune(i);
            pruned += 1;
        }
    })?;
    Ok(pruned)
}

/// Per-row thresholds: row `r` prunes keys below `keys[r]` and the first `take[r]` equal to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowThresholds {
    /// Threshold key of each row.
    pub keys: Vec<u32>,
    /// Ties to prune in each row.
    pub take: Vec<u32>,
}

fn rows_cols(src: &ScoreSource<'_>, cols: usize) -> Result<usize, SelectError> {
    if cols == 0 || src.len() % cols != 0 {
        return Err(SelectError::Shape(format!(
            "{} elements do not form rows of {cols}",
            src.len()
        )));
    }
    Ok(src.len() / cols)
}

/// The `k` lowest scores of every row of a row-major `[rows, cols]` source.
pub fn select_per_row(
    src: &ScoreSource<'_>,
    cols: usize,
    k: u64,
) -> Result<RowThresholds, SelectError> {
    let rows = rows_cols(src, cols)?;
    if k > cols as u64 {
        return Err(SelectError::TooMany { k, n: cols as u64 });
    }
    let mut keys = vec![0u32; src.len()];
    for_each_key(src, 0, |i, key| keys[i] = key)?;
    let mut out = RowThresholds {
        keys: vec![0; rows],
        take: vec![0; rows],
    };
    if k == 0 {
        return Ok(out);
    }
    let mut scratch = vec![0u32; cols];
    for r in 0..rows {
        let row = &keys[r * cols..(r + 1) * cols];
        scratch.copy_from_slice(row);
        let (_, &mut t, _) = scratch.select_nth_unstable((k - 1) as usize);
        let below = row.iter().filter(|&&x| x < t).count() as u64;
        out.keys[r] = t;
        out.take[r] = (k - below) as u32;
    }
    Ok(out)
}

/// Prunes, in `mask`, what [`select_per_row`] chose. Returns the number pruned.
pub fn apply_per_row(
    src: &ScoreSource<'_>,
    cols: usize,
    t: &RowThresholds,
    mask: &mut BitMask,
) -> Result<u64, SelectError> {
    let rows = rows_cols(src, cols)?;
    if t.keys.len() != rows {
        return Err(SelectError::Shape(format!(
            "{} row thresholds for {rows} rows",
            t.keys.len()
        )));
    }
    let mut pruned = 0u64;
    let mut seen = 0u32;
    for_each_key(src, 0, |i, key| {
        let r = i / cols;
        if i % cols == 0 {
            seen = 0;
        }
        let cut = key < t.keys[r]
            || (key == t.keys[r] && {
                seen += 1;
                seen <= t.take[r]
            });
        if cut {
            mask.prune(i);
            pruned += 1;
        }
    })?;
    Ok(pruned)
}

/// Keeps the `n` highest scores of every `m` consecutive elements along rows of `cols`
/// (`cols % m == 0`); among equal scores the lower index is pruned first. Returns the number
/// pruned.
pub fn apply_nm(
    src: &ScoreSource<'_>,
    cols: usize,
    n: u32,
    m: u32,
    mask: &mut BitMask,
) -> Result<u64, SelectError> {
    rows_cols(src, cols)?;
    let (n, m) = (n as usize, m as usize);
    if m == 0 || n > m || m > 32 || cols % m != 0 {
        return Err(SelectError::Shape(format!(
            "{n}:{m} does not fit rows of {cols}"
        )));
    }
    let mut keys = vec![0u32; src.len()];
    for_each_key(src, 0, |i, key| keys[i] = key)?;
    let drop = m - n;
    let mut pruned = 0u64;
    for (g, group) in keys.chunks(m).enumerate() {
        for i in 0..m {
            let rank = (0..m)
                .filter(|&j| group[j] < group[i] || (group[j] == group[i] && j < i))
                .count();
            if rank < drop {
                mask.prune(g * m + i);
                pruned += 1;
            }
        }
    }
    Ok(pruned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Elems;

    /// A tiny deterministic generator, so tests need no dependency.
    fn lcg(seed: &mut u64) -> u32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (*seed >> 33) as u32
    }

    fn bf16_data(n: usize, seed: u64, distinct: u32) -> Vec<u16> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                (0x3c00 + (lcg(&mut s) % distinct) as u16)
                    | if lcg(&mut s) % 2 == 0 { 0x8000 } else { 0 }
            })
            .collect()
    }

    /// Reference: sort all (key, param, index) and take the first k.
    fn brute(sources: &[ScoreSource<'_>], k: usize) -> Vec<Vec<bool>> {
        let mut all = vec![];
        for (p, s) in sources.iter().enumerate() {
            for i in 0..s.len() {
                all.push((key_of(s.score(i)), p, i));
            }
        }
        all.sort();
        let mut pruned: Vec<Vec<bool>> = sources.iter().map(|s| vec![false; s.len()]).collect();
        for &(_, p, i) in &all[..k] {
            pruned[p][i] = true;
        }
        pruned
    }

    fn check_global(sources: &[ScoreSource<'_>], k: u64) {
        let sel = select_global(sources, k).unwrap();
        let expect = brute(sources, k as usize);
        let mut total = 0;
        for (p, s) in sources.iter().enumerate() {
            let mut mask = BitMask::all_kept(s.len());
            total += apply_threshold(s, &sel.params[p], &mut mask).unwrap();
            for (i, &e) in expect[p].iter().enumerate() {
                assert_eq!(!mask.kept(i), e, "param {p} index {i} k {k}");
            }
        }
        assert_eq!(total, k);
    }

    #[test]
    fn global_bf16_with_heavy_ties_matches_sorting() {
        let a = bf16_data(1000, 1, 7);
        let b = bf16_data(333, 2, 5);
        let srcs = [
            ScoreSource::Magnitude(Elems::BF16(&a)),
            ScoreSource::Magnitude(Elems::BF16(&b)),
        ];
        for k in [0, 1, 17, 500, 666, 1332, 1333] {
            check_global(&srcs, k);
        }
    }

    #[test]
    fn global_f32_scaled_needs_two_passes_and_matches() {
        let mut s = 9;
        let w: Vec<f32> = (0..600)
            .map(|_| (lcg(&mut s) % 1000) as f32 * 1e-3 - 0.5)
            .collect();
        let scale: Vec<f32> = (0..20).map(|_| (lcg(&mut s) % 7) as f32 * 0.25).collect();
        let d: Vec<f32> = (0..100).map(|_| (lcg(&mut s) % 50) as f32 - 25.0).collect();
        let srcs = [
            ScoreSource::ScaledMagnitude(Elems::F32(&w), &scale),
            ScoreSource::Dense(Elems::F32(&d)),
        ];
        for k in [0, 1, 99, 350, 699, 700] {
            check_global(&srcs, k);
        }
    }

    #[test]
    fn non_finite_is_reported_with_its_place() {
        let w = [1.0f32, f32::NAN, 2.0];
        let err = select_global(
            &[
                ScoreSource::Magnitude(Elems::F32(&[0.0])),
                ScoreSource::Magnitude(Elems::F32(&w)),
            ],
            1,
        );
        assert_eq!(err, Err(SelectError::NonFinite { param: 1, index: 1 }));
    }

    #[test]
    fn per_row_is_exact_and_breaks_ties_by_column() {
        let w: Vec<f32> = vec![3.0, 1.0, 1.0, 1.0, 2.0, 0.0, 5.0, 5.0, 5.0, 5.0, -1.0, 4.0];
        let src = ScoreSource::Magnitude(Elems::F32(&w));
        let t = select_per_row(&src, 6, 3).unwrap();
        let mut mask = BitMask::all_kept(12);
        assert_eq!(apply_per_row(&src, 6, &t, &mut mask).unwrap(), 6);
        let kept: Vec<bool> = (0..12).map(|i| mask.kept(i)).collect();
        // Row 0: |.| = 3 1 1 1 2 0 -> prune 0, then the ties 1,1 at columns 1,2.
        // Row 1: 5 5 5 5 1 4 -> prune 1, 4, then the first 5 (column 0).
        assert_eq!(
            kept,
            vec![true, false, false, true, true, false, false, true, true, true, false, false]
        );
    }

    #[test]
    fn nm_keeps_n_per_group_and_prunes_lower_index_ties() {
        let w: Vec<f32> = vec![1.0, 1.0, 1.0, 1.0, 0.5, -3.0, 2.0, 0.1];
        let src = ScoreSource::Magnitude(Elems::F32(&w));
        let mut mask = BitMask::all_kept(8);
        assert_eq!(apply_nm(&src, 8, 2, 4, &mut mask).unwrap(), 4);
        let kept: Vec<bool> = (0..8).map(|i| mask.kept(i)).collect();
        assert_eq!(
            kept,
            vec![false, false, true, true, false, true, true, false]
        );
        assert!(apply_nm(&src, 8, 2, 3, &mut mask).is_err());
    }
}
