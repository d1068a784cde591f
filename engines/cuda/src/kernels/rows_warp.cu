// Family: per-row selection, one warp per row.

// ---------------------------------------------------------------------------------------------
// Rows, one warp per row (a row fits a warp's work; no block-wide barriers). Radix select with a
// warp-private 2048-bin histogram in shared memory: digits of 11, 11 and 10 bits, or 11 and 5
// when every key is a bf16 value. Outputs through the segment's S_T / S_TAKE / S_MODE pointers.

#define RU 4  // vectors in flight per lane in the row kernels


template <int DT, int KIND>
__device__ u32 warp_tie_cut(const void* w, const float* scale, u64 n, u64 cols, bool aligned, u64 first_elem,
                            u64 last_elem, u32 T, u64 take, u32 ties);

template <int DT, int KIND>
__device__ void row_select_warp_impl(const u64* segs, int nsegs, u64 total_rows, u32* bad_flag, u64* bad_index) {
    extern __shared__ u32 hist_all[];  // WARP_BINS per warp
    const int V = Ty<DT>::V;
    const int lane = threadIdx.x & 31;
    const u32 warps_per_block = blockDim.x >> 5;
    u32* hist = hist_all + (threadIdx.x >> 5) * WARP_BINS;
    u64 warp_id = (u64)blockIdx.x * warps_per_block + (threadIdx.x >> 5);
    u64 nwarps = (u64)gridDim.x * warps_per_block;
    const bool fit16 = DT == DT_BF16 && KIND != K_SCALED;
    int seg = 0;
    for (u64 g = warp_id; g < total_rows; g += nwarps) {
        while (seg + 1 < nsegs && segs[(u64)(seg + 1) * SEGW + S_FIRST] <= g) seg++;
        const u64* s = segs + (u64)seg * SEGW;
        const void* w = (const void*)s[S_W];
        const float* scale = (const float*)s[S_SCALE];
        u64 cols = s[S_COLS], n = s[S_N];
        u64 r = g - s[S_FIRST];
        u64 k = s[S_K];
        bool aligned = s[S_ALIGNED] != 0 && (cols % V == 0);
        u64 first_elem = r * cols, last_elem = first_elem + cols;
        u64 vfirst = first_elem / V, vlast = (last_elem + V - 1) / V;
        u32 prefix = 0;
        u64 need = k;
        u64 below = 0;
        u32 ties = 0;
        int levels = fit16 ? 2 : 3;
        bool bad = false;
        u64 first_bad = ~0ull;
        for (int level = 0; level < levels; level++) {
            int shift = level == 0 ? 21 : (fit16 ? 16 : (level == 1 ? 10 : 0));
            int width = level == 0 ? 11 : (fit16 ? 5 : (level == 1 ? 11 : 10));
            u32 bins = 1u << width;
            for (u32 i = lane; i < bins; i += 32) hist[i] = 0;
            __syncwarp();
            for (u64 base = vfirst + lane; base < vlast; base += 32 * RU) {
                Vec<DT> vs[RU];
#pragma unroll
                for (int u = 0; u < RU; u++) {
                    u64 vi = base + 32 * u;
                    if (vi < vlast) load_vec<DT>(w, vi, n, aligned, vs[u]);
                    else vs[u].valid = 0;
                }
#pragma unroll
                for (int u = 0; u < RU; u++) {
                    if (vs[u].valid == 0) continue;
                    u64 vi = base + 32 * u;
                    u32 keys[V];
                    bool b = false;
                    keys_of<DT, KIND>(vs[u], vi, scale, cols, keys, b);
                    if (level == 0 && b) {
                        u64 e = first_bad_in<DT, KIND>(vs[u], vi, scale, cols);
                        if (e >= first_elem && e < last_elem) {
                            bad = true;
                            if (e < first_bad) first_bad = e;
                        }
                    }
#pragma unroll
                    for (int j = 0; j < V; j++) {
                        u64 e = vi * V + j;
                        if (j < vs[u].valid && e >= first_elem && e < last_elem) {
                            u32 key = keys[j];
                            bool match = level == 0 || (key >> (shift + width)) == prefix;
                            if (match) atomicAdd(&hist[(key >> shift) & (bins - 1)], 1u);
                        }
                    }
                }
            }
            __syncwarp();
            if (k == 0) break;
            u32 per = bins / 32;
            u32 b0 = lane * per;
            u32 local = 0;
            local = range_sum(hist + b0, per, per);
            u32 total;
            u32 excl = warp_excl_scan(local, &total);
            bool mine = (u64)excl < need && need <= (u64)excl + local;
            u32 digit = 0, before = 0;
            if (mine) {
                u32 run = excl;
                for (u32 i = 0; i < per; i++) {
                    u32 c = hist[b0 + i];
                    if ((u64)run + c >= need) {
                        digit = b0 + i;
                        before = run;
                        break;
                    }
                    run += c;
                }
            }
            u32 owner = __ffs(__ballot_sync(0xffffffffu, mine)) - 1;
            digit = __shfl_sync(0xffffffffu, digit, owner);
            before = __shfl_sync(0xffffffffu, before, owner);
            prefix = (prefix << width) | digit;
            need -= before;
            below += before;
            ties = hist[digit];
            __syncwarp();
        }
        // Any lane that saw a non-finite score reports it.
        if (bad) {
            atomicExch(bad_flag, 1u);
            atomicMin(bad_index + s[S_SLOT], first_bad);
        }
        u32 T = k == 0 ? 0 : (fit16 ? (prefix << 16) : prefix);
        u32 cut = k == 0 ? 0xffffffffu : warp_tie_cut<DT, KIND>(w, scale, n, cols, aligned, first_elem, last_elem, T, k - below, ties);
        if (lane == 0) {
            ((u32*)s[S_T])[r] = T;
            ((u32*)s[S_TAKE])[r] = cut;
            ((u32*)s[S_MODE])[r] = ties;
        }
        __syncwarp();
    }
}

// The column of the `take`-th tie (key == T) of a row, in a warp: lanes count ties over the row
// in order, a scan finds the lane holding it, which names its column. 0xffffffff when take is 0;
// the row length when every tie is pruned.
template <int DT, int KIND>
__device__ u32 warp_tie_cut(const void* w, const float* scale, u64 n, u64 cols, bool aligned, u64 first_elem,
                            u64 last_elem, u32 T, u64 take, u32 ties) {
    const int V = Ty<DT>::V;
    const int lane = threadIdx.x & 31;
    if (take == 0) return 0xffffffffu;
    if (take >= ties) return (u32)cols;
    u64 vfirst = first_elem / V, vlast = (last_elem + V - 1) / V;
    u64 seen = 0;
    for (u64 base = vfirst; base < vlast; base += 32) {
        u64 vi = base + lane;
        Vec<DT> v;
        u32 keys[V];
        u32 t = 0;
        if (vi < vlast) {
            load_vec<DT>(w, vi, n, aligned, v);
            bool b = false;
            keys_of<DT, KIND>(v, vi, scale, cols, keys, b);
#pragma unroll
            for (int j = 0; j < V; j++) {
                u64 e = vi * V + j;
                if (j < v.valid && e >= first_elem && e < last_elem && keys[j] == T) t++;
            }
        } else {
            v.valid = 0;
        }
        u32 tot;
        u32 ex = warp_excl_scan(t, &tot);
        u32 found = 0xffffffffu;
        if (seen + ex < take && take <= seen + ex + t) {
            u64 r = seen + ex;
#pragma unroll
            for (int j = 0; j < V; j++) {
                u64 e = vi * V + j;
                if (j < v.valid && e >= first_elem && e < last_elem && keys[j] == T) {
                    r++;
                    if (r == take && found == 0xffffffffu) found = (u32)(e - first_elem);
                }
            }
        }
        u32 any = __ballot_sync(0xffffffffu, found != 0xffffffffu);
        if (any) return __shfl_sync(0xffffffffu, found, __ffs(any) - 1);
        seen += tot;
    }
    return (u32)cols;
}

