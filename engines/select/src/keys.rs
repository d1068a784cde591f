use half::{bf16, f16};

/// The elements of a tensor in host memory, by storage type.
#[derive(Clone, Copy, Debug)]
pub enum Elems<'a> {
    /// bfloat16 bit patterns.
    BF16(&'a [u16]),
    /// IEEE half bit patterns.
    F16(&'a [u16]),
    /// f32 values.
    F32(&'a [f32]),
}

impl Elems<'_> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Elems::BF16(x) | Elems::F16(x) => x.len(),
            Elems::F32(x) => x.len(),
        }
    }
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Element `i` as f32 (exact for all three types).
    #[inline(always)]
    pub fn get(&self, i: usize) -> f32 {
        match self {
            Elems::BF16(x) => bf16::from_bits(x[i]).to_f32(),
            Elems::F16(x) => f16::from_bits(x[i]).to_f32(),
            Elems::F32(x) => x[i],
        }
    }
}

/// Where the scores of one parameter come from.
#[derive(Clone, Copy, Debug)]
pub enum ScoreSource<'a> {
    /// `|w|`.
    Magnitude(Elems<'a>),
    /// `|w[i][j]| * scale[j]`, rounded to f32, for a row-major `[rows, scale.len()]` weight.
    ScaledMagnitude(Elems<'a>, &'a [f32]),
    /// Scores given as they are.
    Dense(Elems<'a>),
}

impl ScoreSource<'_> {
    /// Number of scores.
    pub fn len(&self) -> usize {
        match self {
            ScoreSource::Magnitude(e)
            | ScoreSource::ScaledMagnitude(e, _)
            | ScoreSource::Dense(e) => e.len(),
        }
    }
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The score of element `i` as f32.
    #[inline(always)]
    pub fn score(&self, i: usize) -> f32 {
        match self {
            ScoreSource::Magnitude(e) => e.get(i).abs(),
            ScoreSource::ScaledMagnitude(e, s) => e.get(i).abs() * s[i % s.len()],
            ScoreSource::Dense(e) => e.get(i),
        }
    }
    /// Whether every key has zero low 16 bits (bf16 values), so one 16-bit histogram pass
    /// determines the threshold exactly.
    pub fn keys_fit_16_bits(&self) -> bool {
        matches!(
            self,
            ScoreSource::Magnitude(Elems::BF16(_)) | ScoreSource::Dense(Elems::BF16(_))
        )
    }
}

/// The order-preserving key of an f32 score: `key_of(a) < key_of(b)` exactly when `a < b`
/// (with `-0.0` below `+0.0`). NaN has no place in the order; callers reject it first.
#[inline(always)]
pub fn key_of(score: f32) -> u32 {
    let b = score.to_bits();
    if b & 0x8000_0000 != 0 {
        !b
    } else {
        b | 0x8000_0000
    }
}

/// The f32 score a key stands for (inverse of [`key_of`]).
pub fn key_value(key: u32) -> f32 {
    if key & 0x8000_0000 != 0 {
        f32::from_bits(key & 0x7fff_ffff)
    } else {
        f32::from_bits(!key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_order_like_floats() {
        let vals = [
            -f32::INFINITY,
            -3.5,
            -1e-30,
            -0.0,
            0.0,
            1e-40,
            1e-30,
            0.5,
            2.0,
            f32::INFINITY,
        ];
        for w in vals.windows(2) {
            assert!(key_of(w[0]) < key_of(w[1]), "{} vs {}", w[0], w[1]);
        }
        for v in vals {
            assert_eq!(key_value(key_of(v)).to_bits(), v.to_bits());
        }
    }
}
