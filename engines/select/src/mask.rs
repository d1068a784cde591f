/// Bytes a mask of `numel` weights takes: one bit each, padded to whole 32-bit words so GPU
/// kernels can store words.
pub fn mask_bytes(numel: usize) -> usize {
    numel.div_ceil(32) * 4
}

/// One bit per weight, 1 = kept. Bit `i % 8` of byte `i / 8` (least significant first) belongs
/// to flat index `i`; padding bits are 0. The same layout on every device and on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BitMask {
    numel: usize,
    bytes: Vec<u8>,
}

impl BitMask {
    /// A mask keeping every weight.
    pub fn all_kept(numel: usize) -> BitMask {
        let mut bytes = vec![0u8; mask_bytes(numel)];
        bytes[..numel / 8].fill(0xff);
        for i in (numel / 8) * 8..numel {
            bytes[i / 8] |= 1 << (i % 8);
        }
        BitMask { numel, bytes }
    }

    /// A mask from its bytes; `None` if the length is wrong or padding bits are set.
    pub fn from_bytes(numel: usize, bytes: Vec<u8>) -> Option<BitMask> {
        if bytes.len() != mask_bytes(numel) {
            return None;
        }
        let m = BitMask { numel, bytes };
        let padding_clear =
            (numel..m.bytes.len() * 8).all(|i| m.bytes[i / 8] & (1 << (i % 8)) == 0);
        padding_clear.then_some(m)
    }

    /// Number of weights it covers.
    pub fn numel(&self) -> usize {
        self.numel
    }

    /// The packed bytes.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    /// The packed bits.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Whether weight `i` is kept.
    #[inline(always)]
    pub fn kept(&self, i: usize) -> bool {
        self.bytes[i / 8] & (1 << (i % 8)) != 0
    }

    /// Marks weight `i` pruned.
    #[inline(always)]
    pub fn prune(&mut self, i: usize) {
        self.bytes[i / 8] &= !(1 << (i % 8));
    }

    /// Number of kept weights.
    pub fn count_kept(&self) -> u64 {
        self.bytes.iter().map(|b| b.count_ones() as u64).sum()
    }

    /// Number of pruned weights.
    pub fn count_pruned(&self) -> u64 {
        self.numel as u64 - self.count_kept()
    }
}

/// Weights in host memory, writable, by storage type.
pub enum ElemsMut<'a> {
    /// bfloat16 bit patterns.
    BF16(&'a mut [u16]),
    /// IEEE half bit patterns.
    F16(&'a mut [u16]),
    /// f32 values.
    F32(&'a mut [f32]),
}

/// Sets to +0 every weight whose bit in `mask` (the [`BitMask`] layout) is 0. Returns how many
/// bits were 0.
pub fn zero_pruned(mask: &[u8], w: ElemsMut<'_>) -> u64 {
    fn run<T: Copy>(mask: &[u8], w: &mut [T], zero: T) -> u64 {
        let mut pruned = 0;
        for (i, x) in w.iter_mut().enumerate() {
            if mask[i / 8] & (1 << (i % 8)) == 0 {
                *x = zero;
                pruned += 1;
            }
        }
        pruned
    }
    match w {
        ElemsMut::BF16(x) | ElemsMut::F16(x) => run(mask, x, 0u16),
        ElemsMut::F32(x) => run(mask, x, 0f32),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_and_counts() {
        let mut m = BitMask::all_kept(37);
        assert_eq!(m.bytes().len(), 8);
        assert_eq!(m.count_kept(), 37);
        m.prune(0);
        m.prune(36);
        assert!(!m.kept(36) && m.kept(35));
        assert_eq!(m.count_pruned(), 2);
        assert!(BitMask::from_bytes(37, m.bytes().to_vec()).is_some());
        let mut bad = m.bytes().to_vec();
        bad[7] = 0x80;
        assert!(BitMask::from_bytes(37, bad).is_none());
    }
}
