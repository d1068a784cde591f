// Family: per-row selection with a row held in registers, and the streaming row apply.

// Per-row selection with the row in registers: one block of 32..896 threads per row (the host
// sizes it so each thread holds at most ROW_REG_V whole vectors), persistent, taking every
// grid-th row. The row is read once and its keys computed once, into registers. The first level
// histograms every key into a window of 2048 bins of 1/64 octave below the row's largest key
// (WIN_SHIFT), so the chosen bin holds ~0.5% of the row; those keys are appended to shared memory,
// and when there are at most two per thread, ranking each against the others finishes the
// selection; else 11-bit levels go on over the copies. In practice: one histogram pass over the
// row, one append of a few dozen keys, one ranking. A row whose selection falls below the window
// starts over with 11-bit levels from the bits every key shares (from the OR and AND of its keys).
// row_prune predicts: after a block's first row of a weight, the first level is a band of finer
// bins around the previous row's threshold (BAND_LG0), which needs no row maximum and leaves a
// key or two in the chosen bin; a row whose threshold lies outside takes the window after all.
// Four vectors a thread (not eight): the kernel is bound by latency, and 72 registers a thread
// keep 28 warps an SM in flight instead of 16 (ROW_REG_V).
// Registers per thread: the keys and a little spill (24 bytes), blocks up to 896 threads.
#define ROW_REG_MAXNREG 72

// The column scales of a vector whose V columns start at `col` of one row (1 unless K_SCALED).
// `col` is a multiple of V and the host starts scales on 16-byte boundaries
// (engine::aligned_scale), so they come in whole 16-byte loads.
template <int DT, int KIND>
__device__ __forceinline__ void scales_at(u32 col, const float* scale, float* sc) {
    const int V = Ty<DT>::V;
#pragma unroll
    for (int j = 0; j < V; j++) sc[j] = 1.0f;
    if (KIND == K_SCALED) {
#pragma unroll
        for (int q = 0; q < V / 4; q++) {
            float4 f = __ldg(reinterpret_cast<const float4*>(scale + col + 4 * q));
            sc[4 * q] = f.x;
            sc[4 * q + 1] = f.y;
            sc[4 * q + 2] = f.z;
            sc[4 * q + 3] = f.w;
        }
    }
}

// Keys of a vector whose V columns start at `col` of one row (no wrap): no division.
template <int DT, int KIND>
__device__ __forceinline__ void keys_at(const Vec<DT>& v, u32 col, const float* scale, u32* keys, bool& bad) {
    const int V = Ty<DT>::V;
    float sc[V];
    scales_at<DT, KIND>(col, scale, sc);
    if (DT == DT_BF16 && KIND == K_MAG) {
#pragma unroll
        for (int j = 0; j < V; j++) {
            u32 b = (u32)v.get(j) & 0x7fffu;
            if (b >= 0x7f80u) bad = true;
            keys[j] = (b | 0x8000u) << 16;
        }
        return;
    }
#pragma unroll
    for (int j = 0; j < V; j++) {
        float x = score_of<DT, KIND>(v.get(j), sc[j]);
        if (!is_finite_bits(x)) bad = true;
        keys[j] = key_of(x);
    }
}

#define ROW_BINS (1 << ROW_BITS)
// ROW_CAND: candidates a row select copies out at most (a chosen bin holds a few dozen keys).
// The row select's dynamic shared memory: ROW_BINS histogram words, ROW_CAND candidates, then
// (row_prune) two row buffers of 16-byte vectors filling the rest.
// Indexed directly (not through a generic pointer), so accesses compile to plain shared loads.
extern __shared__ __align__(16) u32 row_dyn[];

// Asynchronous 16-byte copies from global to shared memory (cp.async, issued in row_prune's
// `issue`): the next row streams in while the current one is selected, so no warp waits on DRAM
// for its row.
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}
__device__ __forceinline__ u32 dynamic_smem_bytes() {
    u32 x;
    asm("mov.u32 %0, %%dynamic_smem_size;" : "=r"(x));
    return x;
}

// Sum of the histogram words a thread owns in a block-wide scan: quads (16-byte reads) from word
// `b0`, `nq` of them, those below `bins` valid. Lanes start `r` quads in (r differs by lane), so a
// warp's 16-byte reads spread over the banks.
__device__ __forceinline__ u32 quad_sum(u32 b0, u32 nq, u32 r, u32 bins) {
    const uint4* h4 = reinterpret_cast<const uint4*>(row_dyn);
    u32 local = 0;
    for (u32 i = 0; i < nq; i++) {
        u32 q = i + r;
        if (q >= nq) q -= nq;
        if (b0 + 4 * q < bins) {
            uint4 v = h4[b0 / 4 + q];
            local += v.x + v.y + v.z + v.w;
        }
    }
    return local;
}

// The owner of the wanted bin finds it in its quads: the bin where the running count (from
// `run`) reaches `need`; returns the bin and sets `before` to the count below it.
__device__ __forceinline__ u32 quad_find(u32 b0, u32 nq, u32 bins, u32 run, u32 need, u32* before) {
    const uint4* h4 = reinterpret_cast<const uint4*>(row_dyn);
    for (u32 q = 0; q < nq && b0 + 4 * q < bins; q++) {
        uint4 v = h4[b0 / 4 + q];
        u32 c[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int j = 0; j < 4; j++) {
            if (run + c[j] >= need) {
                *before = run;
                return b0 + 4 * q + j;
            }
            run += c[j];
        }
    }
    *before = run;
    return 0xffffffffu;  // not reached when the caller owns the bin
}


// Selection keys of a vector whose V columns start at `col` (as keys_at). Magnitudes and scaled
// magnitudes are never negative (column scales are checked to be), so their keys are the score's
// bits with the top bit flipped: key_of's order at one instruction per key. The one difference, a
// -0 score (from a -0 scale) becoming 0 instead of key_of's 0x7fffffff, keeps the order (it is
// the lowest either way) and sel_key_out maps it back. A NaN or an infinity becomes a key of at
// least KEY_NON_FINITE, the row's largest, so the row's maximum finds them without a test per
// key. Dense scores (any sign) take key_of and a test per key.
#define KEY_NON_FINITE 0xff800000u
// `sc`: the vector's column scales from scales_at (loaded early, so their latency hides behind
// other work); unused for dense scores, which load their own.
template <int DT, int KIND>
__device__ __forceinline__ void sel_keys(const Vec<DT>& v, u32 col, const float* scale, const float* sc, u32* keys,
                                         bool& bad) {
    const int V = Ty<DT>::V;
    if (KIND == K_DENSE) {
        keys_at<DT, KIND>(v, col, scale, keys, bad);
        return;
    }
    if (DT == DT_BF16 && KIND == K_MAG) {
#pragma unroll
        for (int j = 0; j < V; j++) keys[j] = (((u32)v.get(j) & 0x7fffu) | 0x8000u) << 16;
        return;
    }
    if (DT == DT_BF16) {
        // Both halves of a word become floats with one instruction each (a shift, a mask).
#pragma unroll
        for (int q = 0; q < 4; q++) {
            float lo = fabsf(__uint_as_float(v.w[q] << 16)), hi = fabsf(__uint_as_float(v.w[q] & 0xffff0000u));
            if (KIND == K_SCALED) {
                lo = __fmul_rn(lo, sc[2 * q]);
                hi = __fmul_rn(hi, sc[2 * q + 1]);
            }
            keys[2 * q] = __float_as_uint(lo) ^ 0x80000000u;
            keys[2 * q + 1] = __float_as_uint(hi) ^ 0x80000000u;
        }
        return;
    }
#pragma unroll
    for (int j = 0; j < V; j++) keys[j] = __float_as_uint(score_of<DT, KIND>(v.get(j), sc[j])) ^ 0x80000000u;
}

// A selection key as key_of gives it (see sel_keys).
template <int KIND>
__device__ __forceinline__ u32 sel_key_out(u32 k) {
    return KIND != K_DENSE && k == 0 ? 0x7fffffffu : k;
}

// Whether a selection key stands for a NaN or an infinity.
template <int KIND>
__device__ __forceinline__ bool sel_key_non_finite(u32 k) {
    return k >= KEY_NON_FINITE || (KIND == K_DENSE && k <= 0x007fffffu);
}

// The first level's window: 2^WIN_SHIFT keys per bin (1/64 of an octave of f32 scores), the top
// bin holding the row's largest key, so ROW_BINS bins span 32 octaves below it. Keys further
// down all count in bin 0; the selection lands there only when half a row sits 32 octaves under
// its largest score, and then the row starts over with full-width levels.
#define WIN_SHIFT 17

// row_prune's band around the previous row's threshold key T: 2^(BAND_LG0 + 1) keys centred on T,
// in ROW_BINS bins (the 32 at either end count the keys beyond, lane by lane). Keys count 2^23 per
// octave, so a block starts at T / 1.09 to 1.09 T. A miss (the row's need-th key outside)
// doubles the block's band for good, up to T / 4 to 4 T. Narrow is faster while it holds: fewer
// keys land in real bins (the rest go to the lane-private edge words), so the atomics conflict
// less and the chosen bin holds fewer keys. Real weights vary more from row to row than the
// benchmark's Gaussian ones, so there a block widens after its first misses (a miss costs one
// more histogram of the row). The measurements behind the widths are in docs/performance.md.
#define BAND_LG0 20
#define BAND_LG_MAX 24

// row_prune's write of a row whose keys are in registers (FUSED, see row_select_reg_impl): keys
// below T are pruned, and (PARTIAL) ties up to column `cut`, else keys below `lim`. The weights
// come from the row's shared copy `rb`; returns 16 (f32: 32) per pruned weight. A template, so
// each row runs the loop of its case (with a run-time flag the compiler may predicate the
// rare partial-tie test into every row).
template <int DT, bool PARTIAL>
__device__ __forceinline__ u32 row_apply_regs(const u32* keys, const uint4* rb, uint4* p, u8* mask, u64 vfirst, u32 bd,
                                              int mine, u32 T, u32 lim, u32 cut, bool write_w, bool want_mask) {
    const int V = Ty<DT>::V;
    u32 zero_bits = 0;
#pragma unroll
    for (int u = 0; u < ROW_REG_V; u++)
        if (u < mine) {
            const u32* kk = keys + u * V;
            u32 cb = 0;  // bit j: element j pruned
            if (PARTIAL) {
#pragma unroll
                for (int j = 0; j < V; j++)
                    cb |= (u32)(kk[j] < T || (kk[j] == T && (threadIdx.x + u * bd) * V + j <= cut)) << j;
            } else if (want_mask) {
#pragma unroll
                for (int j = 0; j < V; j++) cb |= (u32)(kk[j] < lim) << j;
            }
            uint4 q = rb[(u32)u * bd];
            u32 wd[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
            for (int i = 0; i < 4; i++) {
                u32 m;
                if (DT == DT_F32) m = (PARTIAL ? (cb >> i & 1) : kk[i] < lim) ? 0u : 0xffffffffu;
                else if (PARTIAL)
                    m = ((cb >> (2 * i) & 1) ? 0xffff0000u : 0xffffffffu) &
                        ((cb >> (2 * i + 1) & 1) ? 0x0000ffffu : 0xffffffffu);
                else
                    m = (kk[2 * i] < lim ? 0xffff0000u : 0xffffffffu) &
                        (kk[2 * i + 1] < lim ? 0x0000ffffu : 0xffffffffu);
                wd[i] &= m;
                zero_bits += __popc(~m);
            }
            if (write_w) p[(u32)u * bd] = make_uint4(wd[0], wd[1], wd[2], wd[3]);
            if (want_mask) store_mask_bits<DT>(mask, vfirst + threadIdx.x + u * bd, ~cb, V);
        }
    return zero_bits;
}

// FUSED: select and prune in one pass (the row's keys are still in registers when its threshold
// is known; the weights come back from L2 to be written), counting the pruned per slot. The
// caller checked every score finite beforehand, so no write ever needs undoing.
template <int DT, int KIND, bool FUSED, bool FULL>
__device__ void row_select_reg_impl(const u64* segs, int nsegs, u64 total_rows, u32* bad_flag, u64* bad_index,
                                    u64* pruned, u64* band_stats) {
    __shared__ u64 shl[40];
    __shared__ u32 sh[40];
    __shared__ u32 red[64];
    __shared__ u32 s_digit, s_before, s_cut, s_key, s_ties, s_n;
    __shared__ u32 wsum[2][32];
    const int V = Ty<DT>::V;
    const int K = ROW_REG_V * V;  // keys per thread, computed once and kept in registers
    const u32 bd = blockDim.x;
    u32* hist = row_dyn;
    u32* cand = row_dyn + ROW_BINS;
    const u32 nq = (ROW_BINS / 4 + bd - 1) / bd;  // histogram quads each thread scans
    const u32 b0 = threadIdx.x * nq * 4;
    const u32 qr = (threadIdx.x & 31) % nq;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (bd + 31) >> 5;
    // bf16 magnitudes' keys end in sixteen zero bits: levels stop above them.
    const int lo_bits = DT == DT_BF16 && KIND == K_MAG ? 16 : 0;
    // Rows go to blocks in turn (block b takes b, b + grid, ...), so at any moment every SM works
    // on neighbouring rows: the same parameter, whose column scales then stay in L1 (with runs
    // of rows per block, the blocks of one SM sat in different parameters and their scales,
    // 16 KiB each, missed L1 on every row). Segments still change rarely for a block.
    const u64 g0 = blockIdx.x, gstep = gridDim.x;
    int seg = 0;
    while (seg + 1 < nsegs && segs[(u64)(seg + 1) * SEGW + S_FIRST] <= g0) seg++;
    u64 next_first = seg + 1 < nsegs ? segs[(u64)(seg + 1) * SEGW + S_FIRST] : ~0ull;
    const u64* s = segs + (u64)seg * SEGW;
    const void* w = (const void*)s[S_W];
    const float* scale = (const float*)s[S_SCALE];
    u64 cols = s[S_COLS], n = s[S_N], first = s[S_FIRST], k = s[S_K];
    bool aligned = s[S_ALIGNED] != 0;
    u64 my_pruned = 0;
    // row_prune: rows stream through two shared buffers of `buf_vecs` vectors each; `issue`
    // starts the copy of row gg (its own segment cursor, as rows only move forward).
    uint4* rowbuf = reinterpret_cast<uint4*>(row_dyn + ROW_BINS + ROW_CAND);
    const u32 buf_vecs = FUSED ? (dynamic_smem_bytes() / 4 - ROW_BINS - ROW_CAND) / 8 : 0;
    // The streamed row's segment: its fields are kept, so a row's copy reads no table.
    int pseg = seg;
    u64 pnext = next_first, pfirst = first, pcols = cols;
    const uint4* pw = reinterpret_cast<const uint4*>(w);
    auto issue = [&](u64 gg, u32 b) {
        while (gg >= pnext) {
            pseg++;
            const u64* ps = segs + (u64)pseg * SEGW;
            pnext = pseg + 1 < nsegs ? ps[SEGW + S_FIRST] : ~0ull;
            pfirst = ps[S_FIRST];
            pcols = ps[S_COLS];
            pw = reinterpret_cast<const uint4*>(ps[S_W]);
        }
        const uint4* src = pw + ((gg - pfirst) * pcols) / V;
        const u32 pn = (u32)(pcols / V);
        // Addresses converted once; each step moves both by a block's worth of vectors.
        u64 ga, sa;
        asm("cvta.to.global.u64 %0, %1;" : "=l"(ga) : "l"(src + threadIdx.x));
        asm("cvta.to.shared.u64 %0, %1;" : "=l"(sa) : "l"(rowbuf + b * buf_vecs + threadIdx.x));
        for (u32 i = threadIdx.x; i < pn; i += bd, ga += 16 * bd, sa += 16 * bd)
            asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"((u32)sa), "l"(ga) : "memory");
        cp_async_commit();
    };
    if (FUSED && g0 < total_rows) issue(g0, 0);
    // The block's pruned count of its current segment, into the segment's slot (block-wide).
    auto flush = [&]() {
        if (!FUSED) return;
        u64 t = block_sum_u64(my_pruned, shl);
        if (threadIdx.x == 0 && t) atomicAdd(pruned + s[S_SLOT], t);
        my_pruned = 0;
    };
    // Zeroes the histogram's first `bins` words (whole quads) and the append counter; the caller
    // puts a barrier between this and the next use.
    auto clear = [&](u32 bins) {
        uint4* h4 = reinterpret_cast<uint4*>(hist);
        for (u32 i = threadIdx.x; i < (bins + 3) / 4; i += bd) h4[i] = make_uint4(0, 0, 0, 0);
        if (threadIdx.x == 0) s_n = 0;
    };
    // The bin holding the need-th smallest counted key, and the count below it (block-wide).
    // Also sets `count` to the keys in that bin. Two barriers: warps' sums go to alternating
    // halves of `wsum`, so a call never overwrites sums another thread may still be reading.
    u32 par = 0;
    auto find = [&](u32 bins, u64 need, u32* before, u32* count) -> u32 {
        u32 local = quad_sum(b0, nq, qr, bins);
        u32 inc = local;
#pragma unroll
        for (int d = 1; d < 32; d <<= 1) {
            u32 y = __shfl_up_sync(0xffffffffu, inc, d);
            if (lane >= d) inc += y;
        }
        if (lane == 31) wsum[par][warp] = inc;
        __syncthreads();
        u32 excl = inc - local;
        for (int i = 0; i < warp; i++) excl += wsum[par][i];
        par ^= 1;
        if ((u64)excl < need && need <= (u64)excl + local) {
            // need <= the row length, which fits 32 bits
            u32 bf;
            u32 d = quad_find(b0, nq, bins, excl, (u32)need, &bf);
            s_digit = d;
            s_before = bf;
            s_ties = hist[d];
        }
        __syncthreads();
        *before = s_before;
        *count = s_ties;
        return s_digit;
    };
    clear(ROW_BINS);
    // row_prune: the threshold key of the block's previous row of this segment (rows of one
    // weight are alike, so the next row's lies near it; 0 for none), the band's half-width
    // (2^s_band_lg keys) and, for `band_stats`, the rows that tried a band and those that missed.
    // In shared memory, not registers (the kernel has none to spare); thread 0 writes them, and
    // barriers separate its writes from the reads.
    __shared__ u32 s_pred, s_band_lg, s_band_rows, s_band_misses;
    // row_prune: the segment's mask pointer and write flag, read once a segment (read per row
    // from the table, their load's latency stalled every row's write).
    __shared__ u8* s_mask;
    __shared__ u32 s_write;
    // A segment's first band is centred on its hint (S_T: a u32 threshold key the host selected
    // from one of its rows, 0 for none), so a block's first row of a weight is predicted too.
    auto seg_start = [&]() {
        if (!FUSED || threadIdx.x != 0) return;
        const u32* hint = (const u32*)s[S_T];
        s_pred = hint ? *hint : 0u;
        s_mask = (u8*)s[S_MASK];
        s_write = s[S_WRITE] != 0;
    };
    seg_start();
    if (threadIdx.x == 0) {
        s_band_lg = BAND_LG0;
        s_band_rows = 0;
        s_band_misses = 0;
    }
    u32 it = 0;  // rows done by this block: the row buffer's parity
    for (u64 g = g0; g < total_rows; g += gstep, it++) {
        if (g >= next_first) {
            flush();
            while (seg + 1 < nsegs && segs[(u64)(seg + 1) * SEGW + S_FIRST] <= g) seg++;
            next_first = seg + 1 < nsegs ? segs[(u64)(seg + 1) * SEGW + S_FIRST] : ~0ull;
            s = segs + (u64)seg * SEGW;
            w = (const void*)s[S_W];
            scale = (const float*)s[S_SCALE];
            cols = s[S_COLS];
            n = s[S_N];
            first = s[S_FIRST];
            k = s[S_K];
            aligned = s[S_ALIGNED] != 0;
            seg_start();
        }
        u64 r = g - first;
        u64 vfirst = (r * cols) / V;
        u32 nvec = (u32)(cols / V);
        // My vectors are q = threadIdx.x + u * bd for u < mine (a prefix of the u's); FULL: the
        // host launched blocks of nvec / ROW_REG_V threads, so every thread has ROW_REG_V (no
        // per-vector branches).
        const int mine = FULL ? ROW_REG_V : threadIdx.x < nvec ? (int)((nvec - 1 - threadIdx.x) / bd) + 1 : 0;
        u32 keys[K];
        bool bad = false;
        const uint4* rb = rowbuf + (it & 1) * buf_vecs + threadIdx.x;  // my vectors (row_prune)
        {
            // FULL: the column scales first, their loads in flight while the row arrives (the
            // other kernels load them vector by vector: held across the wait, they would spill).
            float sc[K];
            if (FULL) {
#pragma unroll
                for (int u = 0; u < ROW_REG_V; u++) scales_at<DT, KIND>((threadIdx.x + u * bd) * V, scale, sc + u * V);
            }
            Vec<DT> vs[ROW_REG_V];
            if (FUSED) {
                // Row g has arrived (every thread's part: the barrier); every thread is done
                // with row g - 1, so row g + 1 may stream into its buffer.
                cp_async_wait<0>();
                __syncthreads();
                if (g + gstep < total_rows) issue(g + gstep, (it & 1) ^ 1);
            }
            if (FUSED || aligned) {
                // Whole 16-byte vectors from one row pointer (the shared copy, or the weight):
                // no per-vector bounds or 64-bit index.
                const uint4* p = FUSED ? rb : reinterpret_cast<const uint4*>(w) + vfirst + threadIdx.x;
#pragma unroll
                for (int u = 0; u < ROW_REG_V; u++)
                    if (u < mine) {
                        uint4 q = p[(u32)u * bd];
                        vs[u].w[0] = q.x;
                        vs[u].w[1] = q.y;
                        vs[u].w[2] = q.z;
                        vs[u].w[3] = q.w;
                        vs[u].valid = V;
                    }
            } else {
#pragma unroll
                for (int u = 0; u < ROW_REG_V; u++)
                    if (u < mine) load_vec<DT>(w, vfirst + threadIdx.x + u * bd, n, aligned, vs[u]);
            }
#pragma unroll
            for (int u = 0; u < ROW_REG_V; u++)
                if (u < mine) {
                    if (!FULL) scales_at<DT, KIND>((threadIdx.x + u * bd) * V, scale, sc + u * V);
                    sel_keys<DT, KIND>(vs[u], (threadIdx.x + u * bd) * V, scale, sc + u * V, keys + u * V, bad);
                }
        }
        // The row's largest key: the top of the first level's window, and a NaN or infinity
        // check for magnitude keys (row_select; row_prune's caller checked every score, so it
        // needs the maximum only when the row takes the window).
        u32 kmax = 0;
        auto row_max = [&]() {
#pragma unroll
            for (int u = 0; u < ROW_REG_V; u++)
                if (u < mine) {
#pragma unroll
                    for (int j = 0; j < V; j++) kmax = max(kmax, keys[u * V + j]);
                }
            for (int d = 16; d > 0; d >>= 1) kmax = max(kmax, __shfl_xor_sync(0xffffffffu, kmax, d));
            if (lane == 0) red[warp] = kmax;
            __syncthreads();
            kmax = 0;
            for (int i = 0; i < nw; i++) kmax = max(kmax, red[i]);
        };
        if (!FUSED) {
            row_max();
            if (KIND != K_DENSE) bad = kmax >= KEY_NON_FINITE;
        }
        if (!FUSED && bad) {
            u64 first_bad = ~0ull;
#pragma unroll
            for (int u = ROW_REG_V - 1; u >= 0; u--)
                if (u < mine) {
#pragma unroll
                    for (int j = V - 1; j >= 0; j--)
                        if (sel_key_non_finite<KIND>(keys[u * V + j]))
                            first_bad = (vfirst + threadIdx.x + u * bd) * V + j;
                }
            if (first_bad != ~0ull) {
                atomicExch(bad_flag, 1u);
                atomicMin(bad_index + s[S_SLOT], first_bad);
            }
        }
        u64 need = k;
        u32 ties = (u32)cols;
        bool in_cand = false, have_key = false;
        u32 ncand = 0, T = 0, prefix = 0, kand = 0;
        int shift = 32, lo = lo_bits;
        bool cleared = false;  // set when a full-width first level (no window) comes next
        // Once a level has chosen `prefix` (the keys with key >> shift == prefix hold the need-th
        // smallest), copies them to shared memory when few; when at most two per thread, ranks
        // each against the others, which ends the selection. Returns whether it ended.
        auto narrow = [&]() -> bool {
            if (in_cand || shift <= lo || ties > ROW_CAND) return false;
            // Appended through a shared counter: a row holds a few dozen such keys, so a test
            // per key beats a count, a scan and a second pass.
            u32 want = prefix;
#pragma unroll
            for (int u = 0; u < ROW_REG_V; u++)
                if (u < mine) {
#pragma unroll
                    for (int j = 0; j < V; j++)
                        if ((keys[u * V + j] >> shift) == want) cand[atomicAdd(&s_n, 1u)] = keys[u * V + j];
                }
            __syncthreads();
            ncand = ties;
            in_cand = true;
            if (ncand > 2 * bd) return false;
            // Few enough for every thread to rank one or two of them against all the others:
            // the need-th smallest in one step instead of more histogram levels.
            u32 i0 = threadIdx.x, i1 = threadIdx.x + bd;
            u32 c0 = i0 < ncand ? cand[i0] : 0, c1 = i1 < ncand ? cand[i1] : 0;
            u32 l0 = 0, e0 = 0, l1 = 0, e1 = 0;
            if (ncand <= 32) {
                // One warp ranks them all (the usual case: a few dozen candidates).
                if (warp == 0)
                    for (u32 j = 0; j < ncand; j++) {
                        u32 x = cand[j];
                        l0 += x < c0;
                        e0 += x == c0;
                    }
            } else if (ncand <= bd) {
                // Only the warps that hold a candidate (warp-uniform).
                if ((u32)warp * 32 < ncand)
                    for (u32 j = 0; j < ncand; j++) {
                        u32 x = cand[j];
                        l0 += x < c0;
                        e0 += x == c0;
                    }
            } else {
                for (u32 j = 0; j < ncand; j++) {
                    u32 x = cand[j];
                    l0 += x < c0;
                    e0 += x == c0;
                    l1 += x < c1;
                    e1 += x == c1;
                }
            }
            if (i0 < ncand && l0 < need && need <= (u64)l0 + e0) {
                s_key = c0;
                s_before = l0;
                s_ties = e0;
            }
            if (i1 < ncand && l1 < need && need <= (u64)l1 + e1) {
                s_key = c1;
                s_before = l1;
                s_ties = e1;
            }
            __syncthreads();
            // No barrier after these reads: the next writes of these words follow barriers
            // every thread passes only after this.
            T = s_key;
            need -= s_before;
            ties = s_ties;
            have_key = true;
            return true;
        };
        // row_prune: the first level's bins around the previous row's threshold instead (see
        // BAND_LG0): when the need-th smallest lands inside, that level needs no maximum (no
        // reduction, one barrier fewer) and its bin holds a key or two, not dozens. Else the
        // histogram is cleared and the row takes the window, as without a prediction. Keys
        // beyond the band count in 32 words at either end, lane by lane: one shared word
        // for all of them would serialise every warp's atomics.
        bool chosen = false;  // the first level chose a bin
        const u32 pred = FUSED && k > 0 ? s_pred : 0u;
        if (FUSED && pred != 0) {
            const int band_lg = (int)s_band_lg;
            const int bsh = band_lg + 1 - ROW_BITS;
            const int base = (int)(pred >> bsh) - ROW_BINS / 2;
            const int under = lane, over = ROW_BINS - 32 + lane;
#pragma unroll
            for (int u = 0; u < ROW_REG_V; u++)
                if (u < mine) {
#pragma unroll
                    for (int j = 0; j < V; j++)
                        atomicAdd(&hist[min(max((int)(keys[u * V + j] >> bsh) - base, under), over)], 1u);
                }
            __syncthreads();
            if (threadIdx.x == 0) s_band_rows++;
            u32 before, count;
            u32 digit = find(ROW_BINS, need, &before, &count);
            if (digit >= 32 && digit < ROW_BINS - 32) {
                prefix = (u32)(base + (int)digit);
                shift = bsh;
                need -= before;
                ties = count;
                chosen = true;
            } else {
                // Missed: a wider band from now on (rows vary more than it allowed).
                if (threadIdx.x == 0) {
                    s_band_misses++;
                    s_band_lg = min(band_lg + 1, BAND_LG_MAX);
                }
                clear(ROW_BINS);
                __syncthreads();
            }
        }
        const bool window = k > 0 && !chosen;
        if (FUSED && window) row_max();
        if (window) {
            // First level: a window of bins below the row's largest key (the histogram was
            // cleared before this row).
            int base = (int)(kmax >> WIN_SHIFT) - (ROW_BINS - 1);
#pragma unroll
            for (int u = 0; u < ROW_REG_V; u++)
                if (u < mine) {
#pragma unroll
                    for (int j = 0; j < V; j++)
                        atomicAdd(&hist[max((int)(keys[u * V + j] >> WIN_SHIFT) - base, 0)], 1u);
                }
            __syncthreads();
            u32 before, count;
            u32 digit = find(ROW_BINS, need, &before, &count);
            if (digit == 0 && base > 0) {
                // The need-th key lies below the window: start over with full-width levels
                // from the bits every key shares.
                u32 kor = 0;
                kand = 0xffffffffu;
#pragma unroll
                for (int u = 0; u < ROW_REG_V; u++)
                    if (u < mine) {
#pragma unroll
                        for (int j = 0; j < V; j++) {
                            kor |= keys[u * V + j];
                            kand &= keys[u * V + j];
                        }
                    }
                for (int d = 16; d > 0; d >>= 1) {
                    kor |= __shfl_xor_sync(0xffffffffu, kor, d);
                    kand &= __shfl_xor_sync(0xffffffffu, kand, d);
                }
                if (lane == 0) {
                    red[warp] = kor;
                    red[32 + warp] = kand;
                }
                clear(ROW_BINS);
                __syncthreads();
                kor = 0;
                kand = 0xffffffffu;
                for (int i = 0; i < nw; i++) {
                    kor |= red[i];
                    kand &= red[32 + i];
                }
                u32 diff = kor ^ kand;
                int hi = diff ? 32 - __clz(diff) : 0;
                lo = diff ? __ffs(diff) - 1 : 0;
                prefix = hi >= 32 ? 0u : (kand >> hi);
                shift = hi;
                cleared = true;
            } else {
                prefix = (u32)(base + (int)digit);
                shift = WIN_SHIFT;
                need -= before;
                ties = count;
                chosen = true;
            }
        }
        // row_prune, when every key of the chosen bin is pruned (the usual case for a band's bin,
        // which holds a key or two): the bin's top is as good a threshold as its largest key, so
        // no copy and no ranking (two barriers fewer). row_select reports the key itself.
        if (FUSED && chosen && need == ties && shift > 0 && shift < 32 && ((prefix + 1u) >> (32 - shift)) == 0) {
            T = ((prefix + 1u) << shift) - 1u;
            have_key = true;
        }
        // The first level chose a bin (band or window): its keys to shared memory when few.
        if (chosen && !have_key) narrow();
        while (k > 0 && !have_key && shift > lo) {
            int width = min(ROW_BITS, shift - lo);
            shift -= width;
            u32 bins = 1u << width;
            // A key takes part when its bits above the digit equal the prefix found so far.
            int top = shift + width;
            u32 hmask = top >= 32 ? 0u : (0xffffffffu << top);
            u32 want = top >= 32 ? 0u : (prefix << top);
            const bool level0 = cleared;
            if (!cleared) {
                clear(bins);
                __syncthreads();
            }
            cleared = false;
            if (level0) {
                // Every key shares the bits above the first digit: no test, no branch.
#pragma unroll
                for (int u = 0; u < ROW_REG_V; u++)
                    if (u < mine) {
#pragma unroll
                        for (int j = 0; j < V; j++) atomicAdd(&hist[(keys[u * V + j] >> shift) & (bins - 1)], 1u);
                    }
            } else if (!in_cand) {
#pragma unroll
                for (int u = 0; u < ROW_REG_V; u++)
                    if (u < mine) {
#pragma unroll
                        for (int j = 0; j < V; j++) {
                            u32 key = keys[u * V + j];
                            if ((key & hmask) == want) atomicAdd(&hist[(key >> shift) & (bins - 1)], 1u);
                        }
                    }
            } else {
                for (u32 i = threadIdx.x; i < ncand; i += bd) {
                    u32 key = cand[i];
                    if ((key & hmask) == want) atomicAdd(&hist[(key >> shift) & (bins - 1)], 1u);
                }
            }
            __syncthreads();
            u32 before, count;
            u32 digit = find(bins, need, &before, &count);
            prefix = (prefix << width) | digit;
            need -= before;
            ties = count;
            narrow();
        }
        // The next row's first level finds the histogram cleared.
        clear(ROW_BINS);
        u32 low_mask = shift >= 32 ? 0xffffffffu : ((1u << shift) - 1u);
        if (!have_key) T = k == 0 ? 0u : (shift >= 32 ? kand : ((prefix << shift) | (kand & low_mask)));
        if (FUSED && k > 0 && threadIdx.x == 0) s_pred = T;
        u64 take = need;
        // The column of the take-th tie, when only some ties are pruned (found by one thread).
        u32 cut = k == 0 ? 0xffffffffu : (u32)cols;
        if (k > 0 && take < ties) {
            u64 seen = 0;
#pragma unroll
            for (int u = 0; u < ROW_REG_V; u++) {
                if (u * bd >= nvec) break;  // uniform across the block
                u32 t = 0;
                if (u < mine) {
#pragma unroll
                    for (int j = 0; j < V; j++) t += keys[u * V + j] == T;
                }
                u32 tot;
                u32 ex = block_excl_scan(t, sh, &tot);
                if (seen + ex < take && take <= seen + ex + t) {
                    u64 rk = seen + ex;
#pragma unroll
                    for (int j = 0; j < V; j++)
                        if (keys[u * V + j] == T && ++rk == take) s_cut = (threadIdx.x + u * bd) * V + j;
                }
                seen += tot;
                if (seen >= take) break;  // uniform: every thread holds the same `seen`
            }
            __syncthreads();
            cut = s_cut;
        }
        if (FUSED) {
            // Prune keys below T, and ties up to column `cut` (none when cut is !0, all when it is
            // the row length: then simply keys below T + 1, as T is finite). The host launches
            // this for aligned rows of whole vectors only.
            const bool partial = cut != 0xffffffffu && cut < (u32)cols;
            const u32 lim = cut != 0xffffffffu && !partial ? T + 1 : T;
            u8* mask = s_mask;
            const bool write_w = s_write != 0, want_mask = mask != nullptr;
            uint4* p = reinterpret_cast<uint4*>(const_cast<void*>(w)) + vfirst + threadIdx.x;
            u32 zero_bits =
                partial ? row_apply_regs<DT, true>(keys, rb, p, mask, vfirst, bd, mine, T, lim, cut, write_w, want_mask)
                        : row_apply_regs<DT, false>(keys, rb, p, mask, vfirst, bd, mine, T, lim, cut, write_w, want_mask);
            my_pruned += zero_bits >> (DT == DT_F32 ? 5 : 4);
        } else if (threadIdx.x == 0) {
            ((u32*)s[S_T])[r] = k == 0 ? 0u : sel_key_out<KIND>(T);
            ((u32*)s[S_TAKE])[r] = cut;
            ((u32*)s[S_MODE])[r] = ties;
        }
        // row_prune: the next row's first barrier (its data's arrival) already orders this row's
        // shared-memory use before the next's.
        if (!FUSED) __syncthreads();
    }
    flush();
    if (FUSED && band_stats && threadIdx.x == 0 && s_band_rows) {
        atomicAdd(band_stats, (u64)s_band_rows);
        atomicAdd(band_stats + 1, (u64)s_band_misses);
    }
}

