// Family: band selection (a sampled band around the k-th key), tie location and the
// streaming apply that follows it.

// ---------------------------------------------------------------------------------------------
// Band selection for bf16 keys (one 16-bit half says everything): a strided sample fixes a narrow
// band of keys that holds the k-th smallest with near certainty; one full pass then counts, per
// segment, the keys below the band in registers and histograms only the keys inside it. Memory
// bound: shared-memory atomics touch ~1% of the elements instead of all of them. If the k-th key
// falls outside the band after all, the host runs the full histogram instead; either way the
// answer is the same, exact one.

// Sample: every S_SCOPE-th vector of each segment; keys' high halves into the scope's 65536-bin
// histogram (S_SLOT here is the scope). Chunks count sampled vectors. Magnitudes' keys have the
// top bit set, so their upper 32768 bins fit a block's shared memory (dynamic, 128 KiB): the
// block counts there and adds its non-zero bins to the scope's histogram once per chunk, instead
// of every sampled key contending for a few hot bins in device memory.
template <int DT, int KIND>
__device__ void sample_hist_impl(const u64* segs, const u64* chunks, u32 nchunks, u32* hists) {
    extern __shared__ u32 sample_sh[];
    const int V = Ty<DT>::V;
    for (u32 c = blockIdx.x; c < nchunks; c += gridDim.x) {
        if (KIND == K_MAG) {
            for (u32 i = threadIdx.x; i < 32768; i += blockDim.x) sample_sh[i] = 0;
            __syncthreads();
        }
        const u64* s = segs + SEGW * chunks[3 * c];
        const void* w = (const void*)s[S_W];
        const float* scale = (const float*)s[S_SCALE];
        u64 n = s[S_N], cols = s[S_COLS], stride = s[S_SCOPE];
        bool aligned = s[S_ALIGNED] != 0;
        u32* gh = hists + s[S_SLOT] * 65536ull;
        u64 j0 = chunks[3 * c + 1], nj = chunks[3 * c + 2];
        for (u64 j = j0 + threadIdx.x; j < j0 + nj; j += blockDim.x) {
            u64 vi = j * stride;
            Vec<DT> v;
            load_vec<DT>(w, vi, n, aligned, v);
            u32 keys[V];
            bool b = false;
            keys_of<DT, KIND>(v, vi, scale, cols, keys, b);
#pragma unroll
            for (int e = 0; e < V; e++) {
                if (e < v.valid) {
                    if (KIND == K_MAG) atomicAdd(&sample_sh[(keys[e] >> 16) & 0x7fffu], 1u);
                    else atomicAdd(&gh[keys[e] >> 16], 1u);
                }
            }
        }
        if (KIND == K_MAG) {
            __syncthreads();
            for (u32 i = threadIdx.x; i < 32768; i += blockDim.x) {
                u32 x = sample_sh[i];
                if (x) atomicAdd(&gh[0x8000u + i], x);
            }
            __syncthreads();
        }
    }
}

// The band pass's in-band lanes of one vector (word q's lanes as bits 15 - q and 31 - q of the
// folded mask) counted into the shared histogram; dl holds each lane's key minus the band's low end.
__device__ __forceinline__ void band_count_lanes(u32* sh, const u32 inb[4], const u32 dl[4]) {
    u32 m = inb[0] | (inb[1] >> 1) | (inb[2] >> 2) | (inb[3] >> 3);
    while (m) {
        int p = 31 - __clz(m);
        m &= ~(1u << p);
        int q = 15 - (p & 15);
        u32 word = q == 0 ? dl[0] : q == 1 ? dl[1] : q == 2 ? dl[2] : dl[3];
        atomicAdd(&sh[(p >= 16 ? word >> 16 : word) & 0x7fffu], 1u);
    }
}

// The band pass. band_lo / band_width: u32 per scope (S_SCOPE); band: BAND_MAX u32 per segment
// (S_SLOT); below: u64 per segment.
template <int DT, int KIND>
__device__ void band_pass_impl(const u64* segs, const u64* chunks, u32 nchunks, const u32* band_lo,
                               const u32* band_width, u32* band, u64* below, u32* bad_flag, u64* bad_index,
                               u32* band_chunks, u32 chunk_stride) {
    __shared__ u32 sh[BAND_MAX];
    __shared__ u64 shl[40];
    const int V = Ty<DT>::V;
    const int NB = HH;
    for (u32 c = blockIdx.x; c < nchunks; c += gridDim.x) {
        const u64* s = segs + SEGW * chunks[3 * c];
        const void* w = (const void*)s[S_W];
        const float* scale = (const float*)s[S_SCALE];
        u64 n = s[S_N], cols = s[S_COLS];
        bool aligned = s[S_ALIGNED] != 0;
        u32 lo = band_lo[s[S_SCOPE]], width = band_width[s[S_SCOPE]];
        for (u32 i = threadIdx.x; i < width; i += blockDim.x) sh[i] = 0;
        __syncthreads();
        u64 v0 = chunks[3 * c + 1], nv = chunks[3 * c + 2];
        u64 my_below = 0;
        u64 fast_seen = 0, fast_ge = 0;  // packed path: elements seen, and those at or above lo
        bool bad = false;
        u64 first_bad = ~0ull;
        // bf16 magnitudes, two per word as 16-bit lanes m. Each lane's top bit is set first
        // (y = x | 0x80008000), so y - c per lane is 0x8000 + m - c for any c <= 0x8000: no
        // borrow crosses lanes, and the lane's top bit says m >= c. Three subtractions and a few
        // logic ops per word test the band's two ends and finiteness for two elements.
        const u32 lo_m = lo & 0x7fffu;
        const u32 hi_m = min(lo_m + width, 0x8000u);
        const u32 lo2 = lo_m * 0x00010001u, hi2 = hi_m * 0x00010001u;
        const u32 bd = blockDim.x;
        // A chunk of whole, aligned bf16 vectors that the threads divide evenly (every chunk of a
        // 7B model's weights) takes a loop with 32-bit offsets and no per-vector bounds or
        // finiteness branch, because the general loop below is bound by integer issue, not by
        // memory (docs/performance.md). Finiteness is folded into one word per thread
        // and located, on the rare bad chunk, by a second look at the thread's own vectors.
        if (DT == DT_BF16 && KIND == K_MAG && lo >= 0x8000u && aligned && (v0 + nv) * V <= n &&
            nv % (NB * bd) == 0) {
            const uint4* p = reinterpret_cast<const uint4*>(w) + v0;
            const u32 nv32 = (u32)nv;
            u32 badacc = 0;
            for (u32 o = threadIdx.x; o < nv32; o += NB * bd) {
                uint4 ld[NB];
#pragma unroll
                for (int u = 0; u < NB; u++) ld[u] = p[o + u * bd];
                u32 ge = 0;  // per 16-bit lane: at most 4 * NB
#pragma unroll
                for (int u = 0; u < NB; u++) {
                    const u32 x[4] = {ld[u].x, ld[u].y, ld[u].z, ld[u].w};
                    u32 dl[4], inb[4], any = 0;
#pragma unroll
                    for (int q = 0; q < 4; q++) {
                        u32 y = x[q] | 0x80008000u;
                        dl[q] = y - lo2;
                        inb[q] = dl[q] & ~(y - hi2) & 0x80008000u;
                        any |= inb[q];
                        ge += (dl[q] >> 15) & 0x00010001u;
                        badacc |= y - 0x7f807f80u;
                    }
                    if (any) band_count_lanes(sh, inb, dl);
                }
                fast_ge += (ge & 0xffffu) + (ge >> 16);
            }
            fast_seen += (u64)(nv32 / bd) * V;
            if (badacc & 0x80008000u) {
                for (u32 o = threadIdx.x; o < nv32; o += bd) {
                    Vec<DT> v;
                    load_vec<DT>(w, v0 + o, n, true, v);
                    if (!vec_non_finite<DT>(v)) continue;
                    bad = true;
                    u64 e = first_bad_in<DT, KIND>(v, v0 + o, scale, cols);
                    if (e < first_bad) first_bad = e;
                }
            }
        } else {
            for (u64 base = v0 + threadIdx.x; base < v0 + nv; base += NB * blockDim.x) {
                Vec<DT> vs[NB];
#pragma unroll
                for (int u = 0; u < NB; u++) {
                    u64 vi = base + (u64)u * blockDim.x;
                    if (vi < v0 + nv) load_vec<DT>(w, vi, n, aligned, vs[u]);
                    else vs[u].valid = 0;
                }
#pragma unroll
                for (int u = 0; u < NB; u++) {
                    if (vs[u].valid == 0) continue;
                    u64 vi = base + (u64)u * blockDim.x;
                    bool b = false;
                    if (DT == DT_BF16 && KIND == K_MAG && vs[u].valid == V && lo >= 0x8000u) {
                        u32 dl[4], inb[4], ge = 0, badw = 0, any = 0;
#pragma unroll
                        for (int q = 0; q < 4; q++) {
                            u32 y = vs[u].w[q] | 0x80008000u;
                            dl[q] = y - lo2;
                            u32 dh = y - hi2;
                            ge += (dl[q] & 0x80008000u) >> 15;
                            inb[q] = dl[q] & ~dh & 0x80008000u;
                            any |= inb[q];
                            badw |= y - 0x7f807f80u;
                        }
                        fast_seen += V;
                        fast_ge += (ge & 0xffffu) + (ge >> 16);
                        // ~1% of elements fall in the band: one branch per vector, then a loop over
                        // the in-band lanes only (word q's lanes as bits 15 - q and 31 - q).
                        if (any) band_count_lanes(sh, inb, dl);
                        b = (badw & 0x80008000u) != 0;
                    } else {
                        u32 keys[V];
                        keys_of<DT, KIND>(vs[u], vi, scale, cols, keys, b);
#pragma unroll
                        for (int e = 0; e < V; e++) {
                            if (e < vs[u].valid) {
                                u32 hi = keys[e] >> 16;
                                if (hi < lo) my_below++;
                                else if (hi - lo < width) atomicAdd(&sh[hi - lo], 1u);
                            }
                        }
                    }
                    if (b) {
                        bad = true;
                        u64 e = first_bad_in<DT, KIND>(vs[u], vi, scale, cols);
                        if (e < first_bad) first_bad = e;
                    }
                }
            }
        }
        if (bad) {
            atomicExch(bad_flag, 1u);
            atomicMin(bad_index + s[S_SLOT], first_bad);
        }
        u64 t = block_sum_u64(my_below + fast_seen - fast_ge, shl);
        if (threadIdx.x == 0 && t) atomicAdd(below + s[S_SLOT], t);
        __syncthreads();
        u32* gb = band + s[S_SLOT] * (u64)BAND_MAX;
        for (u32 i = threadIdx.x; i < width; i += blockDim.x) {
            u32 x = sh[i];
            if (x) atomicAdd(&gb[i], x);
            // This block alone owns chunk c: its counts say which chunk holds a given tie.
            if (band_chunks && width <= chunk_stride) band_chunks[(u64)c * chunk_stride + i] = x;
        }
        __syncthreads();
    }
}

// The chunked kernels' table (3 u64 per chunk: segment, first unit, units) from per-segment
// counts: starts[s] is segment s's first chunk (nseg + 1 entries, the last the chunk count), units[s]
// its units, `chunk` the units per chunk. A thread per chunk finds its segment by binary search.
extern "C" __global__ void expand_chunks(const u64* starts, const u64* units, u32 nseg, u64 chunk, u64* out) {
    const u64 nchunks = starts[nseg];
    for (u64 c = (u64)blockIdx.x * blockDim.x + threadIdx.x; c < nchunks; c += (u64)gridDim.x * blockDim.x) {
        u32 lo = 0, hi = nseg;  // starts[lo] <= c, and starts[hi] > c (or hi == nseg)
        while (hi - lo > 1) {
            u32 mid = (lo + hi) / 2;
            if (starts[mid] <= c) lo = mid;
            else hi = mid;
        }
        u64 first = (c - starts[lo]) * chunk;
        out[3 * c] = lo;
        out[3 * c + 1] = first;
        out[3 * c + 2] = min(chunk, units[lo] - first);
    }
}

// Block-wide: the bin of a 65536-bin histogram holding its k-th smallest count (k >= 1), or !0
// when the histogram holds fewer (`before`: the count below that bin). Each thread sums a contiguous run of bins in 16-byte loads (all
// in flight at once: this sits between the sample and the band pass, on the device's critical
// path). All threads of the block must call it; blockDim.x divides 16384.
__device__ u32 hist_rank_bin(const u32* h, u64 k, u32* sh, u32* found, u64* before) {
    const u32 per4 = 16384 / blockDim.x;
    const uint4* h4 = reinterpret_cast<const uint4*>(h) + threadIdx.x * per4;
    u32 local = 0;
#pragma unroll 16
    for (u32 i = 0; i < per4; i++) {
        uint4 v = __ldg(h4 + i);
        local += v.x + v.y + v.z + v.w;
    }
    if (threadIdx.x == 0) *found = 0xffffffffu;
    u32 total;
    u32 excl = block_excl_scan(local, sh, &total);  // its barriers order the write above
    if (excl < k && k <= (u64)excl + local) {
        u64 run = excl;
        for (u32 i = 0; i < per4; i++) {
            uint4 v = __ldg(h4 + i);
            u32 c[4] = {v.x, v.y, v.z, v.w};
            u32 j = 0;
            for (; j < 4 && run + c[j] < k; j++) run += c[j];
            if (j < 4) {
                *found = (threadIdx.x * per4 + i) * 4 + j;
                *before = run;
                break;
            }
        }
    }
    __syncthreads();
    u32 bin = *found;
    __syncthreads();
    return bin;
}

// Per scope (one block each), its band from its sample histogram (65536 bins of 16-bit keys):
// the bins of sample ranks ranks[2q] and ranks[2q + 1] (0 and !0: open at that end, the band
// starting at `floor_key` or ending at 0xffff). A band wider than `band_max` bins (or empty) gets
// width 0, which the band pass counts nothing into and band_resolve reports as a miss, so the
// host learns of it with the selection's one read-back instead of waiting for the band first.
// Block 0 also sets the band pass's `nseg` first-bad indices to !0 (a launch the host saves).
extern "C" __global__ void band_choose(const u32* sample, const u64* ranks, u32 floor_key, u32 band_max,
                                       u32* band_lo, u32* band_width, u64* bad_index, u32 nseg) {
    __shared__ u32 sh[40];
    __shared__ u32 found;
    __shared__ u64 below;
    u32 q = blockIdx.x;
    if (q == 0)
        for (u32 i = threadIdx.x; i < nseg; i += blockDim.x) bad_index[i] = ~0ull;
    const u32* h = sample + (u64)q * 65536;
    u64 rl = ranks[2 * q], rh = ranks[2 * q + 1];
    u32 l = rl == 0 ? floor_key : (hist_rank_bin(h, rl, sh, &found, &below) & 0xffffu);
    u32 hi = rh == ~0ull ? 0xffffu : (hist_rank_bin(h, rh, sh, &found, &below) & 0xffffu);
    if (threadIdx.x == 0) {
        bool ok = hi >= l && hi - l + 1 <= band_max;
        band_lo[q] = ok ? l : 0u;
        band_width[q] = ok ? hi - l + 1 : 0u;
    }
}

// Per scope (one block each; scope q owns segments first_seg[q] .. first_seg[q+1]): the band bin
// holding the ks[q]-th smallest, or a miss. out_bin[q] = bin (or 0xffffffff on a miss); per
// segment: below_total (below the chosen bin) and ties (in it), and an item for tie_locate
// (5 u64: segment, first chunk, chunks, bin, take) whose chunks are 0 unless the segment prunes
// some but not all of its ties (takes go to the scope's segments in order) and the band pass kept
// per-chunk counts (width <= chunk_stride). chunk_starts: each segment's first chunk, then the
// chunk count (`chunk_starts` on the host, as for expand_chunks).
extern "C" __global__ void band_resolve(const u32* band, const u64* below, const u32* first_seg, const u32* band_width,
                                        const u64* ks, const u64* chunk_starts, u32 chunk_stride, u32* out_bin,
                                        u64* seg_below, u64* seg_ties, u64* items) {
    __shared__ u32 total[BAND_MAX];
    __shared__ u32 sh[40];
    __shared__ u64 shl[40];
    __shared__ u32 found_bin;
    __shared__ u64 below_all_sh, found_before;
    u32 q = blockIdx.x;
    u32 s0 = first_seg[q], s1 = first_seg[q + 1];
    u32 width = band_width[q];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    // The scope's band histogram: a warp per bin, its lanes over the segments (loads in
    // parallel, not a chain of one per segment).
    for (u32 i = warp; i < width; i += nw) {
        u32 t = 0;
        for (u32 sg = s0 + lane; sg < s1; sg += 32) t += band[(u64)sg * BAND_MAX + i];
        for (int d = 16; d > 0; d >>= 1) t += __shfl_down_sync(0xffffffffu, t, d);
        if (lane == 0) total[i] = t;
    }
    u64 bl = 0;
    for (u32 sg = s0 + threadIdx.x; sg < s1; sg += blockDim.x) bl += below[sg];
    u64 below_all = block_sum_u64(bl, shl);
    if (threadIdx.x == 0) {
        below_all_sh = below_all;
        found_bin = 0xffffffffu;
    }
    __syncthreads();
    below_all = below_all_sh;
    u64 k = ks[q];
    // Rank wanted within the band; a miss when the k-th key lies outside it.
    bool inside = k > below_all;
    u64 need = inside ? k - below_all : 0;
    u32 per = (width + blockDim.x - 1) / blockDim.x;
    u32 b0 = threadIdx.x * per;
    u32 local = 0;
    local = range_sum(total + b0, per, b0 < width ? width - b0 : 0);
    u32 band_total;
    u32 excl = block_excl_scan(local, sh, &band_total);
    if (inside && (u64)excl < need && need <= (u64)excl + local) {
        u64 run = excl;
        for (u32 i = 0; i < per && b0 + i < width; i++) {
            u32 c = total[b0 + i];
            if (run + c >= need) {
                found_bin = b0 + i;
                found_before = run;
                break;
            }
            run += c;
        }
    }
    __syncthreads();
    u32 bin = found_bin;
    if (threadIdx.x == 0) out_bin[q] = bin;
    if (bin == 0xffffffffu) {
        for (u32 sg = s0 + threadIdx.x; sg < s1; sg += blockDim.x) items[5 * (u64)sg + 2] = 0;
        return;
    }
    // A warp per segment: its counts below the bin and in it.
    for (u32 sg = s0 + warp; sg < s1; sg += nw) {
        const u32* h = band + (u64)sg * BAND_MAX;
        u64 x = 0;
        for (u32 i = lane; i < bin; i += 32) x += h[i];
        for (int d = 16; d > 0; d >>= 1) x += __shfl_down_sync(0xffffffffu, x, d);
        if (lane == 0) {
            seg_below[sg] = below[sg] + x;
            seg_ties[sg] = h[bin];
        }
    }
    __syncthreads();  // the block's global writes above are visible to it after the barrier
    // The bin's keys to prune (the rest of the k) go to the scope's segments in order.
    const u64 left = need - found_before;
    u64 run = 0;
    for (u32 base = s0; base < s1; base += blockDim.x) {
        u32 sg = base + threadIdx.x;
        u64 t = sg < s1 ? seg_ties[sg] : 0;
        u64 tot;
        u64 before = run + block_excl_scan(t, shl, &tot);
        if (sg < s1) {
            u64 take = before >= left ? 0 : min(t, left - before);
            u64* it = items + 5 * (u64)sg;
            bool locate = take > 0 && take < t && width <= chunk_stride;
            it[0] = sg;
            it[1] = chunk_starts[sg];
            it[2] = locate ? chunk_starts[sg + 1] - chunk_starts[sg] : 0;
            it[3] = bin;
            it[4] = take;
        }
        run += tot;
    }
}

// Ties of key T in vectors [a, b) of a segment: their count, and (when `rank` > 0) the flat
// index of the rank-th of them in index order (!0 when there are fewer). No early exit, so a
// thread's loads are all in flight together.
template <int DT, int KIND>
__device__ __forceinline__ u32 ties_in(const void* w, const float* scale, u64 n, u64 cols, bool aligned, u64 a, u64 b,
                                       u32 T, u64 rank, u64* found) {
    const int V = Ty<DT>::V;
    u32 t = 0;
#pragma unroll 8
    for (u64 vi = a; vi < b; vi++) {
        Vec<DT> v;
        u32 keys[V];
        bool bb = false;
        load_vec<DT>(w, vi, n, aligned, v);
        keys_of<DT, KIND>(v, vi, scale, cols, keys, bb);
#pragma unroll
        for (int j = 0; j < V; j++)
            if (j < v.valid && keys[j] == T && ++t == rank) *found = vi * V + j;
    }
    return t;
}

// Blocks per tie_locate item: each counts the ties in one part of the located chunk (a few
// vectors a thread, so one round of loads), and the item's last block to finish finds the part
// holding the rank-th and the element in it. (One block scanning a whole 1 MiB chunk would sit
// on the device's critical path between the band pass and the read-back.)

// Per located segment (TIE_PARTS blocks each): the flat index of its take-th key equal to the
// threshold T = (band_lo[scope] + bin) << 16. The band pass's per-chunk counts name the chunk.
// items: 5 u64 each {segment, first chunk, chunks (0: nothing to locate), bin, take}; out: u64
// per item (!0 if not found, which the host treats as an error for a located item); parts:
// TIE_PARTS u32 per item and done: u32 per item, both zeroed.
template <int DT, int KIND>
__device__ void tie_locate_impl(const u64* segs, const u64* chunks, const u64* items, const u32* band_chunks,
                                u32 chunk_stride, const u32* band_lo, u64* out, u32* parts, u32* done) {
    __shared__ u32 sh[40];
    __shared__ u64 s_chunk, s_rank, s_found, s_part_rank;
    __shared__ u32 s_last, s_part;
    const u64 item = blockIdx.x / TIE_PARTS;
    const u32 part = blockIdx.x % TIE_PARTS;
    const u64* it = items + 5 * item;
    const u64* s = segs + SEGW * it[0];
    const void* w = (const void*)s[S_W];
    const float* scale = (const float*)s[S_SCALE];
    u64 n = s[S_N], cols = s[S_COLS];
    bool aligned = s[S_ALIGNED] != 0;
    u64 c0 = it[1], nc = it[2], take = it[4];
    u32 bin = (u32)it[3];
    u32 T = (band_lo[s[S_SCOPE]] + bin) << 16;
    if (threadIdx.x == 0) {
        s_found = ~0ull;
        s_chunk = ~0ull;
    }
    __syncthreads();
    if (threadIdx.x < 32) {
        u64 seen = 0;
        for (u64 c = c0; c < c0 + nc; c += 32) {
            u64 cc = c + threadIdx.x;
            u32 x = cc < c0 + nc ? band_chunks[cc * chunk_stride + bin] : 0;
            u32 tot;
            u32 ex = warp_excl_scan(x, &tot);
            if (seen + ex < take && take <= seen + ex + x) {
                s_chunk = cc;
                s_rank = take - seen - ex;
            }
            seen += tot;
            if (seen >= take) break;
        }
    }
    __syncthreads();
    if (s_chunk == ~0ull) {
        if (part == 0 && threadIdx.x == 0) out[item] = ~0ull;
        return;
    }
    const u64 chunk = s_chunk, rank = s_rank;
    const u64 v0 = chunks[3 * chunk + 1], nv = chunks[3 * chunk + 2];
    const u64 pp = (nv + TIE_PARTS - 1) / TIE_PARTS;
    // Thread runs of part p: [a, b).
    auto run = [&](u32 p, u64* a, u64* b) {
        u64 pa = min(nv, (u64)p * pp), pb = min(nv, (u64)(p + 1) * pp);
        u64 per = (pb - pa + blockDim.x - 1) / blockDim.x;
        *a = v0 + min(pb, pa + (u64)threadIdx.x * per);
        *b = v0 + min(pb, pa + (u64)(threadIdx.x + 1) * per);
    };
    u64 a, b, unused;
    run(part, &a, &b);
    u32 tot;
    block_excl_scan(ties_in<DT, KIND>(w, scale, n, cols, aligned, a, b, T, 0, &unused), sh, &tot);
    if (threadIdx.x == 0) {
        parts[item * TIE_PARTS + part] = tot;
        __threadfence();
        s_last = atomicAdd(done + item, 1u) == TIE_PARTS - 1;
    }
    __syncthreads();
    if (!s_last) return;
    // The item's last block: every part's count is visible (each was fenced before its ticket).
    __threadfence();
    if (threadIdx.x == 0) {
        u64 seen = 0;
        s_part = TIE_PARTS;
        for (u32 p = 0; p < TIE_PARTS; p++) {
            u32 c = ((volatile u32*)parts)[item * TIE_PARTS + p];
            if (seen + c >= rank) {
                s_part = p;
                s_part_rank = rank - seen;
                break;
            }
            seen += c;
        }
    }
    __syncthreads();
    if (s_part < TIE_PARTS) {
        run(s_part, &a, &b);
        u64 r = s_part_rank;
        u32 t = ties_in<DT, KIND>(w, scale, n, cols, aligned, a, b, T, 0, &unused);
        u32 ex = block_excl_scan(t, sh, &tot);
        if (ex < r && r <= (u64)ex + t) {
            u64 f = ~0ull;
            ties_in<DT, KIND>(w, scale, n, cols, aligned, a, b, T, r - ex, &f);
            s_found = f;
        }
    }
    __syncthreads();
    if (threadIdx.x == 0) out[item] = s_found;
}

// Threshold apply for segments that need no tie ranks (MODE_KEEP_TIES, MODE_PRUNE_TIES or MODE_TIES_TO_INDEX): a plain streaming pass over
// chunks of vectors, HU vectors in flight per thread.
template <int DT, int KIND>
__device__ void apply_stream_impl(const u64* segs, const u64* chunks, u32 nchunks, u64* pruned) {
    __shared__ u64 shl[40];
    const int V = Ty<DT>::V;
    for (u32 c = blockIdx.x; c < nchunks; c += gridDim.x) {
        const u64* s = segs + SEGW * chunks[3 * c];
        void* w = (void*)s[S_W];
        const float* scale = (const float*)s[S_SCALE];
        u64 n = s[S_N], cols = s[S_COLS];
        bool aligned = s[S_ALIGNED] != 0;
        u8* mask = (u8*)s[S_MASK];
        u32 T = (u32)s[S_T];
        bool inclusive = s[S_MODE] == 1;
        // MODE_TIES_TO_INDEX: ties up to flat index S_TAKE (located by tie_locate) are pruned.
        u64 tie_cut = s[S_MODE] == MODE_TIES_TO_INDEX ? s[S_TAKE] : 0;
        bool located = s[S_MODE] == MODE_TIES_TO_INDEX;
        bool write_w = s[S_WRITE] != 0;
        u64 v0 = chunks[3 * c + 1], nv = chunks[3 * c + 2];
        u64 my_pruned = 0;
                u32 cut_bits = 0;  // packed path: 16 per element pruned
        u64 fast_seen = 0, fast_kept = 0;
        // bf16 magnitudes against a threshold on the upper key half: two elements per word,
        // compared as 16-bit lanes.
        const bool packed = DT == DT_BF16 && KIND == K_MAG && (T & 0xffffu) == 0 && T >= 0x80000000u;
        const u32 t2 = ((T >> 16) & 0x7fffu) * 0x00010001u;
        // Whole vectors off the tie cut keep m >= c (the band pass's lane trick): c = t where ties
        // are kept (MODE_KEEP_TIES, or past the located cut), t + 1 where they go.
        const u32 keep_ties = t2, drop_ties = t2 + 0x00010001u;
        for (u64 base = v0 + threadIdx.x; base < v0 + nv; base += HU * blockDim.x) {
            Vec<DT> vs[HU];
#pragma unroll
            for (int u = 0; u < HU; u++) {
                u64 vi = base + (u64)u * blockDim.x;
                if (vi < v0 + nv) load_vec<DT>(w, vi, n, aligned, vs[u]);
                else vs[u].valid = 0;
            }
#pragma unroll
            for (int u = 0; u < HU; u++) {
                if (vs[u].valid == 0) continue;
                u64 vi = base + (u64)u * blockDim.x;
                                const u64 e0 = vi * V;
                if (packed && vs[u].valid == V && !(located && e0 <= tie_cut && tie_cut < e0 + V)) {
                    const u32 c2 = (!inclusive && (!located || e0 > tie_cut)) ? keep_ties : drop_ties;
                                        u32 changed = 0, kept = 0, d[4];
#pragma unroll
                    for (int q = 0; q < 4; q++) {
                        u32 x = vs[u].w[q];
                        d[q] = (x | 0x80008000u) - c2;
                        u32 full;  // each lane's top bit copied over the lane: 0xffff = kept
                        asm("prmt.b32 %0, %1, 0, 0xbb99;" : "=r"(full) : "r"(d[q]));
                        changed |= x & ~full;
                        vs[u].w[q] = x & full;
                        kept += (d[q] & 0x80008000u) >> 15;
                    }
                    fast_seen += V;
                    fast_kept += (kept & 0xffffu) + (kept >> 16);
                    if (write_w && changed) store_vec<DT>(w, vi, aligned, vs[u]);
                    if (mask) {
                        u32 keep = 0;
#pragma unroll
                        for (int q = 0; q < 4; q++) keep |= (((d[q] >> 15) & 1u) | ((d[q] >> 30) & 2u)) << (2 * q);
                        store_mask_bits<DT>(mask, vi, keep, V);
                    }
                    continue;
                }
                if (packed) {
                    u32 keep = 0, changed = 0;
                    int valid = vs[u].valid;
#pragma unroll
                    for (int q = 0; q < 4; q++) {
                        u32 x = vs[u].w[q];
                        u32 m = x & 0x7fff7fffu;
                        u32 vmask = (2 * q < valid ? 0xffffu : 0u) | (2 * q + 1 < valid ? 0xffff0000u : 0u);
                        u32 cutm = __vcmpltu2(m, t2);
                        u32 eq = __vcmpeq2(m, t2);
                        if (inclusive) cutm |= eq;
                        if (located && eq) {
                            if ((eq & 0xffffu) && vi * V + 2 * q <= tie_cut) cutm |= 0xffffu;
                            if ((eq >> 16) && vi * V + 2 * q + 1 <= tie_cut) cutm |= 0xffff0000u;
                        }
                        cutm &= vmask;
                        cut_bits += __popc(cutm);
                        changed |= x & cutm;
                        vs[u].w[q] = x & ~cutm;
                        keep |= ((~cutm >> 15) & 1u) << (2 * q);
                        keep |= ((~cutm >> 31) & 1u) << (2 * q + 1);
                    }
                    if (write_w && changed) store_vec<DT>(w, vi, aligned, vs[u]);
                    store_mask_bits<DT>(mask, vi, keep, valid);
                    continue;
                }
                u32 keys[V];
                bool b = false;
                keys_of<DT, KIND>(vs[u], vi, scale, cols, keys, b);
                u32 keep = 0;
                bool changed = false;
#pragma unroll
                for (int j = 0; j < V; j++) {
                    if (j < vs[u].valid) {
                        bool cut = keys[j] < T || (keys[j] == T && (inclusive || (located && vi * V + j <= tie_cut)));
                        decide<DT>(vs[u], j, cut, j, my_pruned, changed, keep);
                    }
                }
                if (write_w && changed) store_vec<DT>(w, vi, aligned, vs[u]);
                store_mask_bits<DT>(mask, vi, keep, vs[u].valid);
            }
        }
                u64 t = block_sum_u64(my_pruned + (cut_bits >> 4) + fast_seen - fast_kept, shl);
        if (threadIdx.x == 0 && t) atomicAdd(pruned + s[S_SLOT], t);
    }
}

