//! Dequantisation of GGML's K-quants: super-blocks of 256 weights in sub-blocks whose scales
//! (and minimums) are themselves quantised against one f16 (Q8_K: f32) per super-block. The
//! layouts and arithmetic (f32, in the same order) follow ggml's `dequantize_row_q*_K`.

use half::f16;

/// Weights per super-block.
pub const QK_K: usize = 256;

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

/// The 6-bit scale and minimum of sub-block `j` (of 8) from the 12 packed scale bytes.
fn scale_min(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// One super-block of Q4_K or Q5_K: in each 64-weight pair `k` of sub-blocks, the low nibbles
/// of 32 bytes then their high nibbles, plus (Q5_K) a fifth bit from `qh` (bit `2k` for the low
/// nibbles, `2k+1` for the high); `x = d·sc·q − dmin·m`.
fn q45_k_block(block: &[u8], qh: Option<&[u8]>, qs: &[u8], out: &mut Vec<f32>) {
    let (d, min) = (f16_at(block, 0), f16_at(block, 2));
    let scales = &block[4..16];
    let fifth = |h: Option<&u8>, bit: usize| match h {
        Some(h) if h & (1 << bit) != 0 => 16.0,
        _ => 0.0,
    };
    for (k, q) in qs.chunks_exact(32).enumerate() {
        let (sc1, m1) = scale_min(2 * k, scales);
        let (sc2, m2) = scale_min(2 * k + 1, scales);
        let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
        let h = |l: usize| qh.map(|qh| &qh[l]);
        out.extend(
            q.iter()
                .enumerate()
                .map(|(l, &b)| d1 * ((b & 0x0f) as f32 + fifth(h(l), 2 * k)) - m1),
        );
        out.extend(
            q.iter()
                .enumerate()
                .map(|(l, &b)| d2 * ((b >> 4) as f32 + fifth(h(l), 2 * k + 1)) - m2),
        );
    }
}

/// Q4_K, 144 bytes per 256 weights: `f16 d, f16 dmin, u8 scales[12], u8 qs[128]`.
pub fn q4_k(data: &[u8], out: &mut Vec<f32>) {
    for block in data.chunks_exact(144) {
        q45_k_block(block, None, &block[16..144], out);
    }
}

/// Q5_K, 176 bytes per 256 weights: `f16 d, f16 dmin, u8 scales[12], u8 qh[32], u8 qs[128]`.
pub fn q5_k(data: &[u8], out: &mut Vec<f32>) {
    for block in data.chunks_exact(176) {
        q45_k_block(block, Some(&block[16..48]), &block[48..176], out);
    }
}

/// Q6_K, 210 bytes per 256 weights: `u8 ql[128], u8 qh[64], i8 scales[16], f16 d`; each
/// weight's 6 bits are 4 from `ql` and 2 from `qh`, less 32; `x = d·scale·q`.
pub fn q6_k(data: &[u8], out: &mut Vec<f32>) {
    for block in data.chunks_exact(210) {
        let d = f16_at(block, 208);
        let mut y = [0f32; QK_K];
        for half in 0..2 {
            let ql = &block[64 * half..64 * half + 64];
            let qh = &block[128 + 32 * half..128 + 32 * half + 32];
            let sc = &block[192 + 8 * half..192 + 8 * half + 8];
            let y = &mut y[128 * half..128 * half + 128];
            for l in 0..32 {
                let is = l / 16;
                let q1 = ((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) as i32 - 32;
                let q2 = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                let s = |i: usize| sc[is + i] as i8 as f32;
                y[l] = d * s(0) * q1 as f32;
                y[l + 32] = d * s(2) * q2 as f32;
                y[l + 64] = d * s(4) * q3 as f32;
                y[l + 96] = d * s(6) * q4 as f32;
            }
        }
        out.extend_from_slice(&y);
    }
}

/// Q8_K, 292 bytes per 256 weights: `f32 d, i8 qs[256], i16 bsums[16]` (the sums serve dot
/// products only); `x = d·q`.
pub fn q8_k(data: &[u8], out: &mut Vec<f32>) {
    for block in data.chunks_exact(292) {
        let d = f32::from_le_bytes(block[0..4].try_into().expect("4"));
        out.extend(block[4..260].iter().map(|&q| d * (q as i8) as f32));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_k_block_layout() {
        // (The gguf package has no Q8_K reference: it appears in dot products, rarely in files.)
        let mut b = vec![0u8; 292];
        b[0..4].copy_from_slice(&0.5f32.to_le_bytes());
        b[4] = (-3i8) as u8;
        b[259] = 100;
        b[260] = 0xff; // bsums: ignored
        let mut out = vec![];
        q8_k(&b, &mut out);
        assert_eq!(out.len(), 256);
        assert_eq!((out[0], out[1], out[255]), (-1.5, 0.0, 50.0));
    }
}
