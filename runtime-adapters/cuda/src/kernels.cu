// Birdbone's selection and pruning kernels, compiled at run time with NVRTC.
//
// They implement the rules of the `birdbone-select` crate bit for bit:
// - a score becomes a 32-bit key whose unsigned order is the f32 order of the score;
// - a threshold selection prunes keys below T plus the first `take` keys equal to T, counting in
//   flat (row-major) index order;
// - N:M keeps the N highest keys of each group of M, pruning the lower index among equals;
// - masks are one bit per weight, bit i%8 of byte i/8, 1 = kept.
//
// Element types (DT): 0 bf16, 1 f16, 2 f32. Score kinds (KIND): 0 |w|, 1 |w| * scale[col]
// (rounded once, no contraction), 2 the values themselves (a dense score tensor).

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

#define DT_BF16 0
#define DT_F16 1
#define DT_F32 2
#define K_MAG 0
#define K_SCALED 1
#define K_DENSE 2

__device__ __forceinline__ float h2f(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}
__device__ __forceinline__ float b2f(u16 b) { return __uint_as_float(((u32)b) << 16); }

template <int DT> struct Ty;
template <> struct Ty<DT_BF16> {
    typedef u16 raw;
    enum { V = 8 };
    __device__ static float f(u16 r) { return b2f(r); }
};
template <> struct Ty<DT_F16> {
    typedef u16 raw;
    enum { V = 8 };
    __device__ static float f(u16 r) { return h2f(r); }
};
template <> struct Ty<DT_F32> {
    typedef u32 raw;
    enum { V = 4 };
    __device__ static float f(u32 r) { return __uint_as_float(r); }
};

__device__ __forceinline__ u32 key_of(float s) {
    u32 b = __float_as_uint(s);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}
__device__ __forceinline__ bool is_finite_bits(float s) {
    return (__float_as_uint(s) & 0x7f800000u) != 0x7f800000u;
}

template <int DT, int KIND>
__device__ __forceinline__ float score_of(typename Ty<DT>::raw r, float scale) {
    float x = Ty<DT>::f(r);
    if (KIND == K_DENSE) return x;
    float a = fabsf(x);
    if (KIND == K_SCALED) return __fmul_rn(a, scale);
    return a;
}

// One vector of V elements (16 bytes), kept packed as four words so that four vectors in flight
// cost sixteen registers; `valid` says how many elements are real (the last vector may be short).
template <int DT> struct Vec {
    u32 w[4];
    int valid;
    __device__ __forceinline__ typename Ty<DT>::raw get(int j) const {
        if (DT == DT_F32) return w[j];
        return (u16)(w[j >> 1] >> ((j & 1) * 16));
    }
    __device__ __forceinline__ void zero(int j) {
        if (DT == DT_F32) w[j] = 0;
        else w[j >> 1] &= (j & 1) ? 0x0000ffffu : 0xffff0000u;
    }
};

// Loads vector `vi` of `w` (n elements). `aligned`: the base is 16-byte aligned.
template <int DT>
__device__ __forceinline__ void load_vec(const void* wp, u64 vi, u64 n, bool aligned, Vec<DT>& v) {
    typedef typename Ty<DT>::raw R;
    const int V = Ty<DT>::V;
    const R* w = (const R*)wp;
    u64 i0 = vi * V;
    if (aligned && i0 + V <= n) {
        uint4 q = *reinterpret_cast<const uint4*>(w + i0);
        v.w[0] = q.x;
        v.w[1] = q.y;
        v.w[2] = q.z;
        v.w[3] = q.w;
        v.valid = V;
    } else {
        int valid = (int)((n - i0) < (u64)V ? (n - i0) : (u64)V);
        v.w[0] = v.w[1] = v.w[2] = v.w[3] = 0;
#pragma unroll
        for (int j = 0; j < V; j++) {
            if (j < valid) {
                u32 x = (u32)w[i0 + j];
                if (DT == DT_F32) v.w[j] = x;
                else v.w[j >> 1] |= x << ((j & 1) * 16);
            }
        }
        v.valid = valid;
    }
}

template <int DT>
__device__ __forceinline__ void store_vec(void* wp, u64 vi, bool aligned, const Vec<DT>& v) {
    typedef typename Ty<DT>::raw R;
    const int V = Ty<DT>::V;
    R* w = (R*)wp;
    u64 i0 = vi * V;
    if (aligned && v.valid == V) {
        uint4 q;
        q.x = v.w[0];
        q.y = v.w[1];
        q.z = v.w[2];
        q.w = v.w[3];
        *reinterpret_cast<uint4*>(w + i0) = q;
    } else {
#pragma unroll
        for (int j = 0; j < V; j++)
            if (j < v.valid) w[i0 + j] = v.get(j);
    }
}

// Keys of a vector; `bad` set when a score is not finite.
template <int DT, int KIND>
__device__ __forceinline__ void keys_of(const Vec<DT>& v, u64 vi, const float* scale, u64 cols, u32* keys, bool& bad) {
    const int V = Ty<DT>::V;
    u64 col = 0;
    if (KIND == K_SCALED) col = (vi * V) % cols;
#pragma unroll
    for (int j = 0; j < V; j++) {
        float sc = 1.0f;
        if (KIND == K_SCALED) {
            sc = scale[col];
            col = (col + 1 == cols) ? 0 : col + 1;
        }
        float s = score_of<DT, KIND>(v.get(j), sc);
        if (j < v.valid && !is_finite_bits(s)) bad = true;
        keys[j] = key_of(s);
    }
}

// The flat index of the first non-finite score of a vector known to hold one.
template <int DT, int KIND>
__device__ __forceinline__ u64 first_bad_in(const Vec<DT>& v, u64 vi, const float* scale, u64 cols) {
    const int V = Ty<DT>::V;
    u64 found = ~0ull;
#pragma unroll
    for (int j = V - 1; j >= 0; j--) {
        u64 e = vi * V + j;
        float s = score_of<DT, KIND>(v.get(j), KIND == K_SCALED ? scale[e % cols] : 1.0f);
        if (j < v.valid && !is_finite_bits(s)) found = e;
    }
    return found;
}

// Writes the keep bits of vector `vi` (bit j = element j kept) into a byte mask.
template <int DT>
__device__ __forceinline__ void store_mask_bits(u8* mask, u64 vi, u32 bits, int valid) {
    if (!mask) return;
    bits &= (valid >= 32) ? 0xffffffffu : ((1u << valid) - 1u);
    if (Ty<DT>::V == 8) {
        mask[vi] = (u8)bits;
    } else {
        // Four bits per f32 vector: two vectors share a byte.
        u64 bit = vi * 4;
        atomicOr((u32*)(mask + (bit / 32) * 4), bits << (bit % 32));
    }
}

// Block-wide exclusive scan of one u32 per thread; `total` receives the sum. Uses `sh` (>= 33
// words). All threads of the block must call it.
__device__ __forceinline__ u32 block_excl_scan(u32 x, u32* sh, u32* total) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    u32 inc = x;
#pragma unroll
    for (int d = 1; d < 32; d <<= 1) {
        u32 y = __shfl_up_sync(0xffffffffu, inc, d);
        if (lane >= d) inc += y;
    }
    if (lane == 31) sh[warp] = inc;
    __syncthreads();
    if (warp == 0) {
        u32 w = lane < nw ? sh[lane] : 0;
        u32 wi = w;
#pragma unroll
        for (int d = 1; d < 32; d <<= 1) {
            u32 y = __shfl_up_sync(0xffffffffu, wi, d);
            if (lane >= d) wi += y;
        }
        if (lane < nw) sh[lane] = wi - w;
        if (lane == 31) sh[32] = wi;
    }
    __syncthreads();
    u32 r = sh[warp] + inc - x;
    *total = sh[32];
    __syncthreads();
    return r;
}

__device__ __forceinline__ u64 block_sum_u64(u64 x, u64* sh) {
    for (int d = 16; d > 0; d >>= 1) x += __shfl_down_sync(0xffffffffu, x, d);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    if (lane == 0) sh[warp] = x;
    __syncthreads();
    u64 t = 0;
    if (threadIdx.x == 0)
        for (int i = 0; i < nw; i++) t += sh[i];
    __syncthreads();
    return t;  // valid in thread 0
}

// ---------------------------------------------------------------------------------------------
// Every kernel below works on a batch of parameters ("segments") in one launch, so a pass over
// a 7B model is a handful of launches, not hundreds. A segment is SEGW u64 words:
#define SEGW 16
#define HU 4  // vectors per thread per histogram step
#define S_W 0        // data pointer (the weight, or a dense score tensor)
#define S_SCALE 1    // f32 column scale pointer (K_SCALED), else 0
#define S_N 2        // elements
#define S_COLS 3     // row length
#define S_ALIGNED 4  // 1 when the data pointer is 16-byte aligned
#define S_SLOT 5     // index into per-segment outputs (histograms, counters, first-bad)
#define S_MASK 6     // mask pointer (0: no mask)
#define S_T 7        // threshold key (apply); rows: pointer to the u32 threshold key per row
#define S_TAKE 8     // ties to prune (apply); rows: pointer to the u32 ties to prune per row
#define S_MODE 9     // 0: keys < T; 1: keys <= T; 2: < T and the first `take` == T;
                     // rows: pointer to the u32 ties present per row
#define S_FIRST 10   // first tile / row of the segment in the launch's index space
#define S_K 11       // per-row count (row select)
#define S_WRITE 12   // write the data (else only the mask)
#define S_NKEEP 13   // N of N:M
#define S_M 14       // M of N:M
//
// Chunk tables split segments into pieces of work: 3 u64 per chunk {segment, first, count},
// in vectors (or N:M units).

// Histograms of key halves. hists: 65536 u32 per slot; bad_flag: u32; bad_index: u64 per slot
// (init !0), the first non-finite element.
template <int DT, int KIND>
__device__ void hist_high_impl(const u64* segs, const u64* chunks, u32 nchunks, u32* hists, u32* bad_flag,
                               u64* bad_index) {
    extern __shared__ u32 sh[];  // 32768 bins: the upper half of the key space (scores >= +0)
    const int V = Ty<DT>::V;
    for (u32 c = blockIdx.x; c < nchunks; c += gridDim.x) {
        for (int i = threadIdx.x; i < 32768; i += blockDim.x) sh[i] = 0;
        __syncthreads();
        const u64* s = segs + SEGW * chunks[3 * c];
        const void* w = (const void*)s[S_W];
        const float* scale = (const float*)s[S_SCALE];
        u64 n = s[S_N], cols = s[S_COLS];
        u32* gh = hists + s[S_SLOT] * 65536ull;
        bool aligned = s[S_ALIGNED] != 0;
        u64 v0 = chunks[3 * c + 1], nv = chunks[3 * c + 2];
        bool bad = false;
        u64 first_bad = ~0ull;
        // HU vectors in flight per thread: enough loads outstanding to keep HBM busy while the
        // shared-memory atomics of the previous batch retire.
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
                u32 keys[V];
                bool b = false;
                keys_of<DT, KIND>(vs[u], vi, scale, cols, keys, b);
#pragma unroll
                for (int j = 0; j < V; j++) {
                    if (j < vs[u].valid) {
                        u32 hi = keys[j] >> 16;
                        if (hi >= 32768u) atomicAdd(&sh[hi - 32768u], 1u);
                        else atomicAdd(&gh[hi], 1u);
                    }
                }
                if (b) {
                    bad = true;
                    u64 e = first_bad_in<DT, KIND>(vs[u], vi, scale, cols);
                    if (e < first_bad) first_bad = e;
                }
            }
        }
        if (bad) {
            atomicExch(bad_flag, 1u);
            atomicMin(bad_index + s[S_SLOT], first_bad);
        }
        __syncthreads();
        for (int i = threadIdx.x; i < 32768; i += blockDim.x) {
            u32 x = sh[i];
            if (x) atomicAdd(&gh[32768 + i], x);
        }
        __syncthreads();
    }
}

// Second pass: histogram of the low halves of keys whose high half is the slot's `his[slot]`.
template <int DT, int KIND>
__device__ void hist_low_impl(const u64* segs, const u64* chunks, u32 nchunks, const u32* his, u32* hists) {
    const int V = Ty<DT>::V;
    for (u32 c = blockIdx.x; c < nchunks; c += gridDim.x) {
        const u64* s = segs + SEGW * chunks[3 * c];
        const void* w = (const void*)s[S_W];
        const float* scale = (const float*)s[S_SCALE];
        u64 n = s[S_N], cols = s[S_COLS];
        u32* gh = hists + s[S_SLOT] * 65536ull;
        u32 hi = his[s[S_SLOT]];
        bool aligned = s[S_ALIGNED] != 0;
        u64 v0 = chunks[3 * c + 1], nv = chunks[3 * c + 2];
        for (u64 vi = v0 + threadIdx.x; vi < v0 + nv; vi += blockDim.x) {
            Vec<DT> v;
            load_vec<DT>(w, vi, n, aligned, v);
            u32 keys[V];
            bool b = false;
            keys_of<DT, KIND>(v, vi, scale, cols, keys, b);
#pragma unroll
            for (int j = 0; j < V; j++)
                if (j < v.valid && (keys[j] >> 16) == hi) atomicAdd(&gh[keys[j] & 0xffffu], 1u);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Threshold apply, in tiles of blockDim * TILE_U vectors. Tiles are taken in order from a
// ticket, so the tie ranks of mode-2 segments can come from a decoupled look-back over the
// segment's earlier tiles (status: one zeroed u64 per tile of the launch).

#define TILE_U 4

__device__ __forceinline__ u64 look_back(u64* status, u64 tile, u64 first_tile, u64 agg) {
    const u64 FLAG_AGG = 1ull << 62, FLAG_PRE = 2ull << 62, VAL = (1ull << 62) - 1;
    if (tile == first_tile) {
        atomicExch(&status[tile], FLAG_PRE | agg);
        return 0;
    }
    atomicExch(&status[tile], FLAG_AGG | agg);
    u64 excl = 0;
    u64 j = tile - 1;
    while (true) {
        u64 s;
        do {
            s = *((volatile u64*)&status[j]);
        } while ((s >> 62) == 0);
        excl += s & VAL;
        if ((s >> 62) == 2 || j == first_tile) break;
        j--;
    }
    atomicExch(&status[tile], FLAG_PRE | (excl + agg));
    return excl;
}

template <int DT, int KIND>
__device__ void apply_threshold_impl(const u64* segs, int nsegs, u64 total_tiles, u64* status, u32* ticket,
                                     u64* pruned) {
    const int V = Ty<DT>::V;
    __shared__ u32 sh[40];
    __shared__ u64 shl[40];
    __shared__ u64 tile_sh, next_sh;
    __shared__ u64 prefix_sh;
    // Persistent blocks: tiles come from a ticket, in order, so mode-2 look-backs always wait on
    // tiles some running block already holds. The next ticket is fetched while a tile is worked.
    if (threadIdx.x == 0) tile_sh = atomicAdd(ticket, 1u);
    __syncthreads();
    u64 tile = tile_sh;
    int seg = 0;
    while (tile < total_tiles) {
        if (threadIdx.x == 0) next_sh = atomicAdd(ticket, 1u);
        while (seg + 1 < nsegs && segs[(u64)(seg + 1) * SEGW + S_FIRST] <= tile) seg++;
        const u64* s = segs + (u64)seg * SEGW;
        void* w = (void*)s[S_W];
        const float* scale = (const float*)s[S_SCALE];
        u64 n = s[S_N], cols = s[S_COLS];
        bool aligned = s[S_ALIGNED] != 0;
        u8* mask = (u8*)s[S_MASK];
        u32 T = (u32)s[S_T];
        u64 take = s[S_TAKE];
        int mode = (int)s[S_MODE];
        bool write_w = s[S_WRITE] != 0;
        u64 first_tile = s[S_FIRST];
        u64 nvec = (n + V - 1) / V;
        u64 v_base = (tile - first_tile) * blockDim.x * TILE_U;
        // Raw vectors only: keys are recomputed when needed, which keeps registers for occupancy.
        Vec<DT> vs[TILE_U];
#pragma unroll
        for (int u = 0; u < TILE_U; u++) {
            u64 vi = v_base + (u64)u * blockDim.x + threadIdx.x;
            if (vi < nvec) load_vec<DT>(w, vi, n, aligned, vs[u]);
            else vs[u].valid = 0;
        }
        u64 rank_base[TILE_U];
        if (mode == 2) {
            u32 excl[TILE_U], tot[TILE_U];
            u64 agg = 0;
#pragma unroll
            for (int u = 0; u < TILE_U; u++) {
                u64 vi = v_base + (u64)u * blockDim.x + threadIdx.x;
                u32 ties = 0;
                if (vs[u].valid) {
                    u32 keys[V];
                    bool b = false;
                    keys_of<DT, KIND>(vs[u], vi, scale, cols, keys, b);
#pragma unroll
                    for (int j = 0; j < V; j++)
                        if (j < vs[u].valid && keys[j] == T) ties++;
                }
                excl[u] = block_excl_scan(ties, sh, &tot[u]);
                agg += tot[u];
            }
            if (threadIdx.x == 0) prefix_sh = look_back(status, tile, first_tile, agg);
            __syncthreads();
            u64 run = prefix_sh;
#pragma unroll
            for (int u = 0; u < TILE_U; u++) {
                rank_base[u] = run + excl[u];
                run += tot[u];
            }
        }
        u64 my_pruned = 0;
#pragma unroll
        for (int u = 0; u < TILE_U; u++) {
            if (vs[u].valid == 0) continue;
            u64 vi = v_base + (u64)u * blockDim.x + threadIdx.x;
            u32 keys[V];
            bool b = false;
            keys_of<DT, KIND>(vs[u], vi, scale, cols, keys, b);
            u32 keep = 0;
            u64 rank = mode == 2 ? rank_base[u] : 0;
            bool changed = false;
#pragma unroll
            for (int j = 0; j < V; j++) {
                if (j < vs[u].valid) {
                    u32 k = keys[j];
                    bool cut;
                    if (k < T) cut = true;
                    else if (k > T) cut = false;
                    else if (mode == 0) cut = false;
                    else if (mode == 1) cut = true;
                    else cut = (rank++ < take);
                    if (cut) {
                        my_pruned++;
                        if (vs[u].get(j) != 0) changed = true;
                        vs[u].zero(j);
                    } else {
                        keep |= 1u << j;
                    }
                }
            }
            if (write_w && changed) store_vec<DT>(w, vi, aligned, vs[u]);
            store_mask_bits<DT>(mask, vi, keep, vs[u].valid);
        }
        u64 t = block_sum_u64(my_pruned, shl);
        if (threadIdx.x == 0 && t) atomicAdd(pruned + s[S_SLOT], t);
        __syncthreads();
        tile = next_sh;
        __syncthreads();
    }
}

// ---------------------------------------------------------------------------------------------
// Per-row exact selection: one block per row of the launch (segments' rows laid end to end).
// Radix select over the row's keys in digits of 12, 10 and 10 bits (12 and 10 when every key is
// a bf16 value, whose low 16 bits are zero), with a shared histogram. Out, per launch row:
// threshold key, ties to prune, ties present.

#define ROW_BINS 4096

template <int DT, int KIND>
__device__ void row_select_impl(const u64* segs, int nsegs, u64 total_rows, u32* bad_flag, u64* bad_index) {
    __shared__ u32 hist[ROW_BINS];
    __shared__ u32 sh[40];
    __shared__ u32 found_digit, found_before;
    const int V = Ty<DT>::V;
    // Persistent blocks walk rows in increasing order, so the segment only moves forward.
    int seg = 0;
    for (u64 g = blockIdx.x; g < total_rows; g += gridDim.x) {
    while (seg + 1 < nsegs && segs[(u64)(seg + 1) * SEGW + S_FIRST] <= g) seg++;
    const u64* s = segs + (u64)seg * SEGW;
    const void* w = (const void*)s[S_W];
    const float* scale = (const float*)s[S_SCALE];
    u64 cols = s[S_COLS], n = s[S_N];
    u64 r = g - s[S_FIRST];
    u64 k = s[S_K];
    bool aligned = s[S_ALIGNED] != 0 && (cols % V == 0);
    bool fit16 = DT == DT_BF16 && KIND != K_SCALED;
    u64 first_elem = r * cols, last_elem = first_elem + cols;
    u64 vfirst = first_elem / V, vlast = (last_elem + V - 1) / V;
    u32 prefix = 0;
    u64 need = k;  // rank (from 1) still to find within the current bin
    u64 below = 0;
    u32 ties = 0;
    int levels = fit16 ? 2 : 3;
    bool bad = false;
    u64 first_bad = ~0ull;
    for (int level = 0; level < levels; level++) {
        int shift = level == 0 ? 20 : (level == 1 ? 10 : 0);
        int width = level == 0 ? 12 : 10;
        u32 bins = 1u << width;
        for (u32 i = threadIdx.x; i < bins; i += blockDim.x) hist[i] = 0;
        __syncthreads();
        for (u64 vi = vfirst + threadIdx.x; vi < vlast; vi += blockDim.x) {
            Vec<DT> v;
            load_vec<DT>(w, vi, n, aligned, v);
            u32 keys[V];
            bool b = false;
            keys_of<DT, KIND>(v, vi, scale, cols, keys, b);
            if (level == 0 && b) {
                u64 e = first_bad_in<DT, KIND>(v, vi, scale, cols);
                if (e >= first_elem && e < last_elem) {
                    bad = true;
                    if (e < first_bad) first_bad = e;
                }
            }
#pragma unroll
            for (int j = 0; j < V; j++) {
                u64 e = vi * V + j;
                if (j < v.valid && e >= first_elem && e < last_elem) {
                    u32 key = keys[j];
                    // The key's bits above this level must match the prefix found so far.
                    bool match = level == 0 || (key >> (shift + width)) == prefix;
                    if (match) atomicAdd(&hist[(key >> shift) & (bins - 1)], 1u);
                }
            }
        }
        __syncthreads();
        if (k == 0) break;
        // The bin holding the need-th smallest: each thread sums a run of bins, then scans.
        u32 per = (bins + blockDim.x - 1) / blockDim.x;
        u32 b0 = threadIdx.x * per;
        u32 local = 0;
        for (u32 i = 0; i < per && b0 + i < bins; i++) local += hist[b0 + i];
        u32 total;
        u32 excl = block_excl_scan(local, sh, &total);
        if ((u64)excl < need && need <= (u64)excl + local) {
            u32 run = excl;
            for (u32 i = 0; i < per && b0 + i < bins; i++) {
                u32 c = hist[b0 + i];
                if ((u64)run + c >= need) {
                    found_digit = b0 + i;
                    found_before = run;
                    break;
                }
                run += c;
            }
        }
        __syncthreads();
        u32 digit = found_digit;
        prefix = (prefix << width) | digit;
        need -= found_before;
        below += found_before;
        ties = hist[digit];
        __syncthreads();
    }
    if (bad) {
        atomicExch(bad_flag, 1u);
        atomicMin(bad_index + s[S_SLOT], first_bad);
    }
        if (threadIdx.x == 0) {
        u32* out_key = (u32*)s[S_T];
        u32* out_take = (u32*)s[S_TAKE];
        u32* out_ties = (u32*)s[S_MODE];
        if (k == 0) {
            out_key[r] = 0;
            out_take[r] = 0;
            out_ties[r] = 0;
        } else {
            out_key[r] = fit16 ? (prefix << 10) : prefix;
            out_take[r] = (u32)(k - below);
            out_ties[r] = ties;
        }
    }
    __syncthreads();
    }
}

// Per-row apply of row_select's output: one block per launch row.
template <int DT, int KIND>
__device__ void row_apply_impl(const u64* segs, int nsegs, u64 total_rows, u64* pruned) {
    __shared__ u32 sh[40];
    __shared__ u64 shl[40];
    const int V = Ty<DT>::V;
    int seg = 0;
    for (u64 g = blockIdx.x; g < total_rows; g += gridDim.x) {
    while (seg + 1 < nsegs && segs[(u64)(seg + 1) * SEGW + S_FIRST] <= g) seg++;
    const u64* s = segs + (u64)seg * SEGW;
    void* w = (void*)s[S_W];
    const float* scale = (const float*)s[S_SCALE];
    u64 cols = s[S_COLS], n = s[S_N];
    u64 r = g - s[S_FIRST];
    u8* mask = (u8*)s[S_MASK];
    bool write_w = s[S_WRITE] != 0;
        u32 T = ((const u32*)s[S_T])[r], take = ((const u32*)s[S_TAKE])[r], tiesr = ((const u32*)s[S_MODE])[r];
    int mode = take == 0 ? 0 : (take >= tiesr ? 1 : 2);
    bool vec_rows = s[S_ALIGNED] != 0 && (cols % V == 0);
    u64 first_elem = r * cols, last_elem = first_elem + cols;
    u64 vfirst = first_elem / V, vlast = (last_elem + V - 1) / V;
    u64 rank = 0;
    u64 my_pruned = 0;
    for (u64 base = vfirst; base < vlast; base += blockDim.x) {
        u64 vi = base + threadIdx.x;
        Vec<DT> v;
        u32 keys[V];
        u32 t = 0;
        if (vi < vlast) {
            load_vec<DT>(w, vi, n, vec_rows, v);
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
        u64 my_rank = rank;
        if (mode == 2) {
            u32 tot;
            u32 ex = block_excl_scan(t, sh, &tot);
            my_rank = rank + ex;
            rank += tot;
        }
        if (v.valid) {
            u32 keep = 0;
            bool changed = false;
            bool whole = true;
#pragma unroll
            for (int j = 0; j < V; j++) {
                u64 e = vi * V + j;
                bool inside = j < v.valid && e >= first_elem && e < last_elem;
                if (j < v.valid && !inside) whole = false;
                if (inside) {
                    u32 k = keys[j];
                    bool cut;
                    if (k < T) cut = true;
                    else if (k > T) cut = false;
                    else if (mode == 0) cut = false;
                    else if (mode == 1) cut = true;
                    else cut = (my_rank++ < take);
                    if (cut) {
                        my_pruned++;
                        if (v.get(j) != 0) changed = true;
                        v.zero(j);
                    } else {
                        keep |= 1u << j;
                    }
                }
            }
            if (write_w && changed) {
                if (whole) store_vec<DT>(w, vi, vec_rows, v);
                else {
                    typedef typename Ty<DT>::raw R;
                    R* wr = (R*)w;
#pragma unroll
                    for (int j = 0; j < V; j++) {
                        u64 e = vi * V + j;
                        if (j < v.valid && e >= first_elem && e < last_elem) wr[e] = v.get(j);
                    }
                }
            }
            if (mask) {
                if (whole) store_mask_bits<DT>(mask, vi, keep, v.valid);
                else {
#pragma unroll
                    for (int j = 0; j < V; j++) {
                        u64 e = vi * V + j;
                        if (j < v.valid && e >= first_elem && e < last_elem && (keep >> j & 1))
                            atomicOr((u32*)(mask + (e / 32) * 4), 1u << (e % 32));
                    }
                }
            }
        }
    }
    u64 tsum = block_sum_u64(my_pruned, shl);
    if (threadIdx.x == 0 && tsum) atomicAdd(pruned + s[S_SLOT], tsum);
    __syncthreads();
    }
}

// ---------------------------------------------------------------------------------------------
// N:M: keep the N highest keys of every M consecutive elements along rows. Fast path (M a
// template constant, aligned data): each thread takes E = max(M, V) elements, whole groups.
// Chunks count in such units. Generic path (M = 0): one group per unit, element by element.

template <int DT, int KIND, int M>
__device__ void nm_impl(const u64* segs, const u64* chunks, u32 nchunks, u64* pruned) {
    __shared__ u64 shl[40];
    const int V = Ty<DT>::V;
    typedef typename Ty<DT>::raw R;
    for (u32 c = blockIdx.x; c < nchunks; c += gridDim.x) {
        const u64* s = segs + SEGW * chunks[3 * c];
        void* w = (void*)s[S_W];
        const float* scale = (const float*)s[S_SCALE];
        u64 n = s[S_N], cols = s[S_COLS];
        u8* mask = (u8*)s[S_MASK];
        bool write_w = s[S_WRITE] != 0;
        u32 nkeep = (u32)s[S_NKEEP], m = (u32)s[S_M];
        u64 u0 = chunks[3 * c + 1], nu = chunks[3 * c + 2];
        u64 my_pruned = 0;
        if (M > 0) {
            const int E = M > V ? M : V;
            const int NV = E / V;
            const u32 drop = (u32)M - nkeep;
            for (u64 unit = u0 + threadIdx.x; unit < u0 + nu; unit += blockDim.x) {
                Vec<DT> vs[NV];
                u32 keys[E];
                bool b = false;
#pragma unroll
                for (int q = 0; q < NV; q++) {
                    load_vec<DT>(w, unit * NV + q, n, true, vs[q]);
                    keys_of<DT, KIND>(vs[q], unit * NV + q, scale, cols, keys + q * V, b);
                }
                int valid = 0;
#pragma unroll
                for (int q = 0; q < NV; q++) valid += vs[q].valid;
                u32 keep = 0;
                bool any_cut = false;
#pragma unroll
                for (int e = 0; e < E; e++) {
                    const int g = e / M * M;
                    u32 rank = 0;
#pragma unroll
                    for (int j = 0; j < M; j++) rank += (keys[g + j] < keys[e]) || (keys[g + j] == keys[e] && g + j < e);
                    if (e < valid && rank < drop) {
                        my_pruned++;
                        if (vs[e / V].get(e % V) != 0) any_cut = true;
                        vs[e / V].zero(e % V);
                    } else if (e < valid) {
                        keep |= 1u << e;
                    }
                }
                if (write_w && any_cut) {
#pragma unroll
                    for (int q = 0; q < NV; q++) store_vec<DT>(w, unit * NV + q, true, vs[q]);
                }
#pragma unroll
                for (int q = 0; q < NV; q++) store_mask_bits<DT>(mask, unit * NV + q, keep >> (q * V), vs[q].valid);
            }
        } else {
            R* wr = (R*)w;
            u32 drop = m - nkeep;
            for (u64 gi = u0 + threadIdx.x; gi < u0 + nu; gi += blockDim.x) {
                u32 keys[32];
                for (u32 i = 0; i < m; i++) {
                    u64 e = gi * m + i;
                    float sc = score_of<DT, KIND>(wr[e], KIND == K_SCALED ? scale[e % cols] : 1.0f);
                    keys[i] = key_of(sc);
                }
                for (u32 i = 0; i < m; i++) {
                    u32 rank = 0;
                    for (u32 j = 0; j < m; j++) rank += (keys[j] < keys[i]) || (keys[j] == keys[i] && j < i);
                    u64 e = gi * m + i;
                    if (rank < drop) {
                        my_pruned++;
                        if (write_w) wr[e] = 0;
                    } else if (mask) {
                        atomicOr((u32*)(mask + (e / 32) * 4), 1u << (e % 32));
                    }
                }
            }
        }
        u64 t = block_sum_u64(my_pruned, shl);
        if (threadIdx.x == 0 && t) atomicAdd(pruned + s[S_SLOT], t);
    }
}

// ---------------------------------------------------------------------------------------------
// Finite check: per slot, the smallest flat index of a NaN or infinity (first[slot] init !0).
template <int DT>
__device__ void find_non_finite_impl(const u64* segs, const u64* chunks, u32 nchunks, u64* first) {
    const int V = Ty<DT>::V;
    for (u32 c = blockIdx.x; c < nchunks; c += gridDim.x) {
        const u64* s = segs + SEGW * chunks[3 * c];
        const void* w = (const void*)s[S_W];
        u64 n = s[S_N];
        bool aligned = s[S_ALIGNED] != 0;
        u64 v0 = chunks[3 * c + 1], nv = chunks[3 * c + 2];
        u64 mine = ~0ull;
        for (u64 vi = v0 + threadIdx.x; vi < v0 + nv; vi += blockDim.x) {
            Vec<DT> v;
            load_vec<DT>(w, vi, n, aligned, v);
#pragma unroll
            for (int j = 0; j < V; j++)
                if (j < v.valid && !is_finite_bits(Ty<DT>::f(v.get(j))) && vi * V + j < mine) mine = vi * V + j;
        }
        if (mine != ~0ull) atomicMin(first + s[S_SLOT], mine);
    }
}

// Zeroes the elements whose mask bit is 0; counts them per slot.
template <int DT>
__device__ void apply_mask_impl(const u64* segs, const u64* chunks, u32 nchunks, u64* pruned) {
    __shared__ u64 shl[40];
    const int V = Ty<DT>::V;
    for (u32 c = blockIdx.x; c < nchunks; c += gridDim.x) {
        const u64* s = segs + SEGW * chunks[3 * c];
        void* w = (void*)s[S_W];
        u64 n = s[S_N];
        bool aligned = s[S_ALIGNED] != 0;
        const u8* mask = (const u8*)s[S_MASK];
        u64 v0 = chunks[3 * c + 1], nv = chunks[3 * c + 2];
        u64 my_pruned = 0;
        for (u64 vi = v0 + threadIdx.x; vi < v0 + nv; vi += blockDim.x) {
            u64 bit0 = vi * V;
            u32 bits = (mask[bit0 / 8] >> (bit0 % 8)) & ((1u << V) - 1u);
            int valid = (int)((n - bit0) < (u64)V ? (n - bit0) : (u64)V);
            u32 want = valid == V ? ((1u << V) - 1u) : ((1u << valid) - 1u);
            if ((bits & want) == want) continue;  // nothing pruned here: no read, no write
            Vec<DT> v;
            load_vec<DT>(w, vi, n, aligned, v);
            bool changed = false;
#pragma unroll
            for (int j = 0; j < V; j++) {
                if (j < v.valid && !(bits >> j & 1)) {
                    my_pruned++;
                    if (v.get(j) != 0) changed = true;
                    v.zero(j);
                }
            }
            if (changed) store_vec<DT>(w, vi, aligned, v);
        }
        u64 t = block_sum_u64(my_pruned, shl);
        if (threadIdx.x == 0 && t) atomicAdd(pruned + s[S_SLOT], t);
    }
}

// ---------------------------------------------------------------------------------------------
// Histogram bookkeeping for the host: totals over slots, one bin of every slot, and counts
// below a bin per slot.

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
    u32 per = 65536 / blockDim.x;
    u32 b0 = threadIdx.x * per;
    u64 local = 0;
    for (u32 i = 0; i < per; i++) local += h[b0 + i];
    // 64-bit exclusive scan from two 32-bit scans would overflow for huge slots; slots hold at most
    // 2^32 - 1 elements (checked by the host), so 32 bits suffice.
    u32 total;
    u32 excl = block_excl_scan((u32)local, sh, &total);
    if (excl < k && k <= (u64)excl + local) {
        u64 run = excl;
        for (u32 i = 0; i < per; i++) {
            u32 c = h[b0 + i];
            if (run + c >= k) {
                found_bin = b0 + i;
                found_before = run;
                break;
            }
            run += c;
        }
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        bins[s] = found_bin;
        before[s] = found_before;
        at[s] = h[found_bin];
    }
}

// ---------------------------------------------------------------------------------------------
// Entry points, one per element type and score kind.

#define FOR_DT_KIND(M)                                                                               \
    M(bf16_mag, DT_BF16, K_MAG) M(bf16_scaled, DT_BF16, K_SCALED) M(bf16_dense, DT_BF16, K_DENSE)   \
    M(f16_mag, DT_F16, K_MAG) M(f16_scaled, DT_F16, K_SCALED) M(f16_dense, DT_F16, K_DENSE)         \
    M(f32_mag, DT_F32, K_MAG) M(f32_scaled, DT_F32, K_SCALED) M(f32_dense, DT_F32, K_DENSE)

#define ENTRIES(name, DT, KIND)                                                                      \
    extern "C" __global__ void __launch_bounds__(1024, 1) hist_high_##name(                          \
        const u64* segs, const u64* chunks, u32 nchunks,                                             \
                                                u32* hists, u32* bad_flag, u64* bad_index) {        \
        hist_high_impl<DT, KIND>(segs, chunks, nchunks, hists, bad_flag, bad_index);               \
    }                                                                                                \
    extern "C" __global__ void hist_low_##name(const u64* segs, const u64* chunks, u32 nchunks,      \
                                               const u32* his, u32* hists) {                         \
        hist_low_impl<DT, KIND>(segs, chunks, nchunks, his, hists);                                  \
    }                                                                                                \
    extern "C" __global__ void __launch_bounds__(256, 4) apply_threshold_##name(const u64* segs, int nsegs, u64 tiles,        \
                                                      u64* status, u32* ticket, u64* pruned) {       \
        apply_threshold_impl<DT, KIND>(segs, nsegs, tiles, status, ticket, pruned);                  \
    }                                                                                                \
        extern "C" __global__ void row_select_##name(const u64* segs, int nsegs, u64 rows,              \
                                                 u32* bad_flag, u64* bad_index) {                    \
        row_select_impl<DT, KIND>(segs, nsegs, rows, bad_flag, bad_index);                           \
    }                                                                                                \
    extern "C" __global__ void __launch_bounds__(256, 4) row_apply_##name(const u64* segs, int nsegs, u64 rows, u64* pruned) {\
        row_apply_impl<DT, KIND>(segs, nsegs, rows, pruned);                                         \
    }                                                                                                \
    extern "C" __global__ void nm4_##name(const u64* segs, const u64* chunks, u32 nchunks,          \
                                          u64* pruned) {                                             \
        nm_impl<DT, KIND, 4>(segs, chunks, nchunks, pruned);                                         \
    }                                                                                                \
    extern "C" __global__ void nm8_##name(const u64* segs, const u64* chunks, u32 nchunks,          \
                                          u64* pruned) {                                             \
        nm_impl<DT, KIND, 8>(segs, chunks, nchunks, pruned);                                         \
    }                                                                                                \
    extern "C" __global__ void nm_##name(const u64* segs, const u64* chunks, u32 nchunks,           \
                                         u64* pruned) {                                              \
        nm_impl<DT, KIND, 0>(segs, chunks, nchunks, pruned);                                         \
    }

FOR_DT_KIND(ENTRIES)

#define DT_ENTRIES(name, DT)                                                                         \
    extern "C" __global__ void find_non_finite_##name(const u64* segs, const u64* chunks,           \
                                                      u32 nchunks, u64* first) {                     \
        find_non_finite_impl<DT>(segs, chunks, nchunks, first);                                      \
    }                                                                                                \
    extern "C" __global__ void apply_mask_##name(const u64* segs, const u64* chunks, u32 nchunks,   \
                                                 u64* pruned) {                                      \
        apply_mask_impl<DT>(segs, chunks, nchunks, pruned);                                          \
    }

DT_ENTRIES(bf16, DT_BF16)
DT_ENTRIES(f16, DT_F16)
DT_ENTRIES(f32, DT_F32)
