//! Dequantisation of the GGML block formats this importer reads.

use half::f16;

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

/// Q8_0: blocks of 32 as `f16 d, i8 q[32]`; `x = d * q`.
pub fn q8_0(data: &[u8], out: &mut Vec<f32>) {
    for block in data.chunks_exact(34) {
        let d = f16_at(block, 0);
        out.extend(block[2..].iter().map(|&q| d * (q as i8) as f32));
    }
}

/// Q4_0: blocks of 32 as `f16 d, u8 q[16]`; low nibbles are elements 0..16, high 16..32;
/// `x = d * (q - 8)`.
pub fn q4_0(data: &[u8], out: &mut Vec<f32>) {
    for block in data.chunks_exact(18) {
        let d = f16_at(block, 0);
        let q = &block[2..];
        out.extend(q.iter().map(|&b| d * ((b & 0x0f) as i32 - 8) as f32));
        out.extend(q.iter().map(|&b| d * ((b >> 4) as i32 - 8) as f32));
    }
}

/// Q4_1: blocks of 32 as `f16 d, f16 m, u8 q[16]`; low nibbles are elements 0..16, high
/// 16..32; `x = d * q + m`.
pub fn q4_1(data: &[u8], out: &mut Vec<f32>) {
    for block in data.chunks_exact(20) {
        let d = f16_at(block, 0);
        let m = f16_at(block, 2);
        let q = &block[4..];
        out.extend(q.iter().map(|&b| d * (b & 0x0f) as f32 + m));
        out.extend(q.iter().map(|&b| d * (b >> 4) as f32 + m));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q4_1_block_layout() {
        let mut b = vec![0u8; 20];
        b[0..2].copy_from_slice(&f16::from_f32(0.5).to_bits().to_le_bytes());
        b[2..4].copy_from_slice(&f16::from_f32(-1.0).to_bits().to_le_bytes());
        b[4] = 0x3a; // element 0 = 10, element 16 = 3
        let mut out = vec![];
        q4_1(&b, &mut out);
        assert_eq!(out.len(), 32);
        assert_eq!(out[0], 0.5 * 10.0 - 1.0);
        assert_eq!(out[16], 0.5 * 3.0 - 1.0);
        assert_eq!(out[1], -1.0);
    }

    #[test]
    fn q8_0_block_layout() {
        let mut b = vec![0u8; 34];
        b[0..2].copy_from_slice(&f16::from_f32(0.25).to_bits().to_le_bytes());
        b[2] = (-4i8) as u8;
        b[33] = 7;
        let mut out = vec![];
        q8_0(&b, &mut out);
        assert_eq!((out[0], out[31], out[1]), (-1.0, 1.75, 0.0));
    }
}
