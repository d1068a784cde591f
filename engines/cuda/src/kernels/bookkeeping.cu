// Family: histogram bookkeeping for the host.

// ---------------------------------------------------------------------------------------------
// Histogram bookkeeping for the host: totals over slots, one bin of every slot, and counts
// below a bin per slot.

// out = sqrt(in) for several f32 arrays, a block each: `table` holds {in, out, n} per array.
// sqrtf is correctly rounded here (NVRTC's default -prec-sqrt=true), as libtorch's sqrt is.
extern "C" __global__ void sqrt_many_f32(const u64* table, u32 count) {
    for (u32 e = blockIdx.x; e < count; e += gridDim.x) {
        const float* in = (const float*)table[3 * e];
        float* out = (float*)table[3 * e + 1];
        const u64 n = table[3 * e + 2];
        for (u64 i = threadIdx.x; i < n; i += blockDim.x) out[i] = sqrtf(in[i]);
    }
}

extern "C" __global__ void sum_slots(const u32* hists, u32 slots, u64* total) {
    u32 b = blockIdx.x * blockDim.x + threadIdx.x;
    if (b >= 65536) return;
    u64 t = 0;
    for (u32 s = 0; s < slots; s++) t += hists[(u64)s * 65536 + b];
    total[b] = t;
}

extern "C" __global__ void slot_counts(const u32* hists, u32 slots, u32 bin, u64* at, u64* below) {
    __shared__ u64 shl[40];
    u32 s = blockIdx.x;
    if (s >= slots) return;
    const u32* h = hists + (u64)s * 65536;
    u64 x = 0;
    for (u32 b = threadIdx.x; b < bin; b += blockDim.x) x += h[b];
    u64 t = block_sum_u64(x, shl);
    if (threadIdx.x == 0) {
        at[s] = h[bin];
        below[s] = t;
    }
}

// Per slot s with ks[s] > 0: the bin of its ks[s]-th smallest key, the count before that bin, and
// the count in it. One block per slot; bins[s] = 0xffffffff when ks[s] == 0.
extern "C" __global__ void find_slot_bins(const u32* hists, u32 slots, const u64* ks, u32* bins, u64* before,
                                          u64* at) {
    __shared__ u32 sh[40];
    __shared__ u32 found_bin;
    __shared__ u64 found_before;
    u32 s = blockIdx.x;
    if (s >= slots) return;
    const u32* h = hists + (u64)s * 65536;
    u64 k = ks[s];
    if (k == 0) {
        if (threadIdx.x == 0) {
            bins[s] = 0xffffffffu;
            before[s] = 0;
            at[s] = 0;
        }
        return;
    }
    // Slots hold at most 2^32 - 1 elements (checked by the host), so 32-bit counts suffice.
    u32 bin = hist_rank_bin(h, k, sh, &found_bin, &found_before);
    if (threadIdx.x == 0) {
        bins[s] = bin;
        before[s] = bin == 0xffffffffu ? 0 : found_before;
        at[s] = bin == 0xffffffffu ? 0 : h[bin];
    }
}

