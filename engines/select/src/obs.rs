//! The optimal-brain-surgeon column sweep of SparseGPT over one block of columns, on host
//! memory: the CPU path of the host operation `obs_sweep` and the reference the CUDA kernel
//! follows operation for operation.
//!
//! Rows are independent: each walks the block's columns in order, decides N:M groups at their
//! first column from its current (already updated) values, zeroes what is pruned and spreads
//! the error over the columns after it through the row of `H⁻¹`'s Cholesky factor.

/// One block: `w` is `rows × b` (row stride `w_stride`), `hinv` is `b × b` (row stride
/// `h_stride`), `prune` and `err` are `rows × b` contiguous.
pub struct SweepBlock<'a> {
    /// The weights, updated in place (pruned ones become 0).
    pub w: &'a mut [f32],
    /// Elements between rows of `w`.
    pub w_stride: usize,
    /// The block of the upper Cholesky factor of `H⁻¹`.
    pub hinv: &'a [f32],
    /// Elements between rows of `hinv`.
    pub h_stride: usize,
    /// 1 = pruned. Read as given without `nm`; written with it.
    pub prune: &'a mut [u8],
    /// The errors `(w - q) / hinv[i][i]`, written.
    pub err: &'a mut [f32],
    /// Rows.
    pub rows: usize,
    /// Columns in the block.
    pub b: usize,
    /// `(n, m)`: keep `n` of every `m`, decided at each group's first column.
    pub nm: Option<(usize, usize)>,
}

/// The sweep of one row (see [`sweep`]).
fn sweep_row(
    w: &mut [f32],
    hinv: &[f32],
    h_stride: usize,
    prune: &mut [u8],
    err: &mut [f32],
    nm: Option<(usize, usize)>,
) {
    let b = prune.len();
    for i in 0..b {
        if let Some((n, m)) = nm {
            if i % m == 0 {
                choose_group(&w[i..i + m], hinv, h_stride, i, m - n, &mut prune[i..i + m]);
            }
        }
        let wi = w[i];
        let q = if prune[i] != 0 { 0.0 } else { wi };
        let e = (wi - q) / hinv[i * h_stride + i];
        let row = &hinv[i * h_stride..i * h_stride + b];
        for j in i + 1..b {
            // Rounded as the reference's outer product then subtraction (no fused multiply-add;
            // Rust never contracts). A zero error subtracts zeros, as the reference does.
            w[j] -= e * row[j];
        }
        w[i] = q;
        err[i] = e;
    }
}

/// Marks the `drop` smallest of `w[j]² / d[j]²` in a group (ties: lower column first).
fn choose_group(
    w: &[f32],
    hinv: &[f32],
    h_stride: usize,
    first: usize,
    drop: usize,
    prune: &mut [u8],
) {
    let m = w.len();
    let score = |j: usize| {
        let d = hinv[(first + j) * h_stride + first + j];
        (w[j] * w[j]) / (d * d)
    };
    for (j, p) in prune.iter_mut().enumerate().take(m) {
        // Rank of j: how many in the group come before it in (score, column) order.
        let sj = score(j);
        let rank = (0..m)
            .filter(|&o| {
                let so = score(o);
                so < sj || (so == sj && o < j)
            })
            .count();
        *p = u8::from(rank < drop);
    }
}

/// Runs the sweep over every row of `block`, rows split across the available cores.
pub fn sweep(block: SweepBlock<'_>) {
    let SweepBlock {
        w,
        w_stride,
        hinv,
        h_stride,
        prune,
        err,
        rows,
        b,
        nm,
    } = block;
    if rows == 0 || b == 0 {
        return;
    }
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(rows);
    let per = rows.div_ceil(threads);
    std::thread::scope(|s| {
        let mut w_rest = &mut w[..];
        let mut p_rest = &mut prune[..];
        let mut e_rest = &mut err[..];
        for start in (0..rows).step_by(per) {
            let n = per.min(rows - start);
            let w_len = if start + n == rows {
                w_rest.len()
            } else {
                n * w_stride
            };
            let (wc, wr) = std::mem::take(&mut w_rest).split_at_mut(w_len);
            let (pc, pr) = std::mem::take(&mut p_rest).split_at_mut(n * b);
            let (ec, er) = std::mem::take(&mut e_rest).split_at_mut(n * b);
            (w_rest, p_rest, e_rest) = (wr, pr, er);
            s.spawn(move || {
                for r in 0..n {
                    sweep_row(
                        &mut wc[r * w_stride..r * w_stride + b],
                        hinv,
                        h_stride,
                        &mut pc[r * b..(r + 1) * b],
                        &mut ec[r * b..(r + 1) * b],
                        nm,
                    );
                }
            });
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With `H⁻¹ = I` the sweep is plain masking: no error spreads.
    #[test]
    fn identity_hessian_only_masks() {
        let (rows, b) = (3, 4);
        let mut w: Vec<f32> = (0..12).map(|i| i as f32 - 5.5).collect();
        let orig = w.clone();
        let hinv: Vec<f32> = (0..16)
            .map(|i| if i % 5 == 0 { 1.0 } else { 0.0 })
            .collect();
        let mut prune = vec![0u8; 12];
        let mut err = vec![0f32; 12];
        sweep(SweepBlock {
            w: &mut w,
            w_stride: b,
            hinv: &hinv,
            h_stride: b,
            prune: &mut prune,
            err: &mut err,
            rows,
            b,
            nm: Some((2, 4)),
        });
        for r in 0..rows {
            let row = &orig[r * b..(r + 1) * b];
            let mut order: Vec<usize> = (0..b).collect();
            order.sort_by(|&x, &y| row[x].abs().total_cmp(&row[y].abs()).then(x.cmp(&y)));
            for (rank, &j) in order.iter().enumerate() {
                let pruned = rank < 2;
                assert_eq!(prune[r * b + j] != 0, pruned);
                assert_eq!(w[r * b + j], if pruned { 0.0 } else { row[j] });
                assert_eq!(err[r * b + j], if pruned { row[j] } else { 0.0 });
            }
        }
    }

    /// The error of a pruned column moves onto the later columns through `hinv`'s row.
    #[test]
    fn error_spreads_forward_only() {
        let b = 3;
        let mut w = vec![1.0f32, 2.0, 3.0];
        let hinv = vec![2.0f32, 0.5, -1.0, 0.0, 1.0, 0.25, 0.0, 0.0, 4.0];
        let mut prune = vec![1u8, 0, 0];
        let mut err = vec![0f32; 3];
        sweep(SweepBlock {
            w: &mut w,
            w_stride: b,
            hinv: &hinv,
            h_stride: b,
            prune: &mut prune,
            err: &mut err,
            rows: 1,
            b,
            nm: None,
        });
        // e = 1 / 2; w1 = 2 - 0.5·0.5; w2 = 3 - 0.5·(-1).
        assert_eq!(err, vec![0.5, 0.0, 0.0]);
        assert_eq!(w, vec![0.0, 1.75, 3.5]);
    }
}
