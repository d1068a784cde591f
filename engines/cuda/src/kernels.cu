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

// Prunes element j of `v` when `cut` (counted in `pruned`; `changed` notes a weight that was not
// already zero, so the vector must be written back), else sets bit `bit` of `keep`.
template <int DT>
__device__ __forceinline__ void decide(Vec<DT>& v, int j, bool cut, int bit, u64& pruned, bool& changed, u32& keep) {
    if (cut) {
        pruned++;
        if (v.get(j) != 0) changed = true;
        v.zero(j);
    } else {
        keep |= 1u << bit;
    }
}

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
    float sc[V];
#pragma unroll
    for (int j = 0; j < V; j++) sc[j] = 1.0f;
    if (KIND == K_SCALED) {
        // 32-bit division when it suffices: a 64-bit one is a long software sequence, and this
        // runs for every vector.
        u64 e0 = vi * V;
        u64 col = (e0 | cols) >> 32 ? e0 % cols : (u64)((u32)e0 % (u32)cols);
        if (col + V <= cols && ((u64)(scale + col) & 15) == 0) {
            // The vector's columns are consecutive: the scales come in whole 16-byte loads.
#pragma unroll
            for (int q = 0; q < V / 4; q++) {
                float4 f = *reinterpret_cast<const float4*>(scale + col + 4 * q);
                sc[4 * q] = f.x;
                sc[4 * q + 1] = f.y;
                sc[4 * q + 2] = f.z;
                sc[4 * q + 3] = f.w;
            }
        } else {
#pragma unroll
            for (int j = 0; j < V; j++) {
                sc[j] = scale[col];
                col = (col + 1 == cols) ? 0 : col + 1;
            }
        }
    }
    if (DT == DT_BF16 && KIND == K_MAG) {
        // |w| of a bf16 is its bits without the sign: the key needs no float arithmetic.
#pragma unroll
        for (int j = 0; j < V; j++) {
            u32 b = (u32)v.get(j) & 0x7fffu;
            if (j < v.valid && b >= 0x7f80u) bad = true;
            keys[j] = (b | 0x8000u) << 16;
        }
        return;
    }
#pragma unroll
    for (int j = 0; j < V; j++) {
        float s = score_of<DT, KIND>(v.get(j), sc[j]);
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

// Whether a vector holds a NaN or an infinity: 16-bit types test both halves of a word at once
// (an all-ones exponent), so the common all-finite case costs a few instructions per vector.
template <int DT>
__device__ __forceinline__ bool vec_non_finite(const Vec<DT>& v) {
    u32 acc = 0;
    if (DT == DT_F32) {
#pragma unroll
        for (int q = 0; q < 4; q++) acc |= (v.w[q] & 0x7f800000u) == 0x7f800000u;
    } else {
        const u32 e = DT == DT_BF16 ? 0x7f807f80u : 0x7c007c00u;
#pragma unroll
        for (int q = 0; q < 4; q++) acc |= __vcmpeq2(v.w[q] & e, e);
    }
    return acc != 0;
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

// Sum of the `per` words from `p` that a thread owns in a scan over contiguous ranges (`n` of them
// valid). Threads start at different offsets (by lane): thread t's range begins at t * per, so
// reading in order would put a warp's loads in a few banks (16-way conflicts for per = 16).
__device__ __forceinline__ u32 range_sum(const u32* p, u32 per, u32 n) {
    u32 r = per ? (threadIdx.x & 31) % per : 0, local = 0;
    for (u32 i = 0; i < per; i++) {
        u32 j = i + r;
        if (j >= per) j -= per;
        if (j < n) local += p[j];
    }
    return local;
}

// Warp-wide exclusive scan; `total` receives the warp's sum.
__device__ __forceinline__ u32 warp_excl_scan(u32 x, u32* total) {
    int lane = threadIdx.x & 31;
    u32 inc = x;
#pragma unroll
    for (int d = 1; d < 32; d <<= 1) {
        u32 y = __shfl_up_sync(0xffffffffu, inc, d);
        if (lane >= d) inc += y;
    }
    *total = __shfl_sync(0xffffffffu, inc, 31);
    return inc - x;
}

// Block-wide exclusive scan of one u32 or u64 per thread; `total` receives the sum. Uses `sh`
// (>= 33 words). All threads of the block must call it.
template <typename T>
__device__ __forceinline__ T block_excl_scan(T x, T* sh, T* total) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    T inc = x;
#pragma unroll
    for (int d = 1; d < 32; d <<= 1) {
        T y = __shfl_up_sync(0xffffffffu, inc, d);
        if (lane >= d) inc += y;
    }
    if (lane == 31) sh[warp] = inc;
    __syncthreads();
    if (warp == 0) {
        T w = lane < nw ? sh[lane] : 0;
        T wi = w;
#pragma unroll
        for (int d = 1; d < 32; d <<= 1) {
            T y = __shfl_up_sync(0xffffffffu, wi, d);
            if (lane >= d) wi += y;
        }
        if (lane < nw) sh[lane] = wi - w;
        if (lane == 31) sh[32] = wi;
    }
    __syncthreads();
    T r = sh[warp] + inc - x;
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
#define HU 8  // vectors in flight per thread in the streaming kernels
#define HH 4  // the same for the full-histogram kernel (1024 threads a block)
#define NMU 4  // N:M units in flight per thread
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
#define S_SCOPE 15   // selection scope (band pass); sample stride in vectors (sampling)
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
        // HH vectors in flight per thread: enough loads outstanding to keep HBM busy while the
        // shared-memory atomics of the previous batch retire.
        for (u64 base = v0 + threadIdx.x; base < v0 + nv; base += HH * blockDim.x) {
            Vec<DT> vs[HH];
#pragma unroll
            for (int u = 0; u < HH; u++) {
                u64 vi = base + (u64)u * blockDim.x;
                if (vi < v0 + nv) load_vec<DT>(w, vi, n, aligned, vs[u]);
                else vs[u].valid = 0;
            }
#pragma unroll
            for (int u = 0; u < HH; u++) {
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

#define TILE_U 8

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
    __shared__ u32 wtot[64];
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
            // Tie ranks in flat order (u, then thread): one warp scan per u in registers, then
            // one pass over the (u, warp) totals in shared memory: two barriers per tile.
            const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
            u32 wex[TILE_U];
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
                u32 wt;
                wex[u] = warp_excl_scan(ties, &wt);
                if (lane == 0) wtot[u * nw + warp] = wt;
            }
            __syncthreads();
            if (warp == 0) {
                // TILE_U * nw <= 64 totals: two per lane, in (u, warp) order.
                u32 a = 2 * lane < TILE_U * nw ? wtot[2 * lane] : 0;
                u32 b2 = 2 * lane + 1 < TILE_U * nw ? wtot[2 * lane + 1] : 0;
                u32 all;
                u32 ex = warp_excl_scan(a + b2, &all);
                if (2 * lane < TILE_U * nw) wtot[2 * lane] = ex;
                if (2 * lane + 1 < TILE_U * nw) wtot[2 * lane + 1] = ex + a;
                if (lane == 0) prefix_sh = look_back(status, tile, first_tile, all);
            }
            __syncthreads();
            u64 run = prefix_sh;
#pragma unroll
            for (int u = 0; u < TILE_U; u++) rank_base[u] = run + wtot[u * nw + warp] + wex[u];
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
                    decide<DT>(vs[u], j, cut, j, my_pruned, changed, keep);
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
            // NMU units in flight per thread: their loads go out together.
            for (u64 base = u0 + threadIdx.x; base < u0 + nu; base += NMU * blockDim.x) {
                Vec<DT> vs[NMU][NV];
#pragma unroll
                for (int t = 0; t < NMU; t++) {
                    u64 unit = base + (u64)t * blockDim.x;
#pragma unroll
                    for (int q = 0; q < NV; q++) {
                        if (unit < u0 + nu) load_vec<DT>(w, unit * NV + q, n, true, vs[t][q]);
                        else vs[t][q].valid = 0;
                    }
                }
#pragma unroll
                for (int t = 0; t < NMU; t++) {
                    u64 unit = base + (u64)t * blockDim.x;
                    if (unit >= u0 + nu) continue;
                    u32 keys[E];
                    bool b = false;
#pragma unroll
                    for (int q = 0; q < NV; q++) keys_of<DT, KIND>(vs[t][q], unit * NV + q, scale, cols, keys + q * V, b);
                    int valid = 0;
#pragma unroll
                    for (int q = 0; q < NV; q++) valid += vs[t][q].valid;
                    u32 keep = 0;
                    bool any_cut = false;
                                        if (M == 4 && KIND == K_MAG && DT != DT_F32 && E == 8 && drop == 2 && valid == E) {
                        // 2:4 on whole vectors, two groups of four 16-bit magnitudes (two words
                        // each), compared as lanes: with each lane's top bit set, `lane - c` never
                        // borrows and its top bit says `m >= c`. Element j's rank g_j counts the
                        // others it beats (equal magnitudes: the higher index wins); it is kept when
                        // g_j >= 2, so exactly two of each four go.
#pragma unroll
                        for (int h = 0; h < 2; h++) {
                            u32 a = vs[t][0].w[2 * h], bw = vs[t][0].w[2 * h + 1];
                            u32 ma = a & 0x7fff7fffu, mb = bw & 0x7fff7fffu;
                            u32 mb_sw = __byte_perm(mb, 0, 0x1032);   // (m3, m2)
                            u32 hi13 = __byte_perm(ma, mb, 0x7632);   // (m1, m3)
                            u32 lo02 = __byte_perm(ma, mb, 0x5410);   // (m0, m2)
                            // lane0 [c0 > c2], lane1 [c1 > c3]
                            u32 b1 = (((ma | 0x80008000u) - mb - 0x00010001u) >> 15) & 0x00010001u;
                            // lane0 [c0 > c3], lane1 [c1 > c2]
                            u32 b2 = (((ma | 0x80008000u) - mb_sw - 0x00010001u) >> 15) & 0x00010001u;
                            // lane0 [c1 > c0], lane1 [c3 > c2]
                            u32 b3 = (((hi13 | 0x80008000u) - lo02) >> 15) & 0x00010001u;
                            u32 ga = b1 + b2 + 1u + (b3 & 1u) * 0xffffu;  // (g0, g1)
                            u32 gb = 0x00020003u + (b3 >> 16) * 0xffffu - b1 - __byte_perm(b2, 0, 0x1032);  // (g2, g3)
                            u32 ka = ga + 0x7ffe7ffeu, kb = gb + 0x7ffe7ffeu;  // lane top bit: g >= 2
                            u32 fa, fb;
                            asm("prmt.b32 %0, %1, 0, 0xbb99;" : "=r"(fa) : "r"(ka));
                            asm("prmt.b32 %0, %1, 0, 0xbb99;" : "=r"(fb) : "r"(kb));
                            if ((a & ~fa) | (bw & ~fb)) any_cut = true;
                            vs[t][0].w[2 * h] = a & fa;
                            vs[t][0].w[2 * h + 1] = bw & fb;
                                                        if (mask)
                                keep |= (((ka >> 15) & 1u) | ((ka >> 30) & 2u) | ((kb >> 13) & 4u) | ((kb >> 28) & 8u)) << (4 * h);
                        }
                        my_pruned += 4;
                    } else if (M == 4 && KIND == K_MAG && DT != DT_F32) {
                        // 16-bit magnitudes: the bits without the sign order like |w|, and with the
                        // index in the group below them every key is distinct (lower index =
                        // smaller among equals). A sorting network gives the drop-th smallest; the
                        // group prunes everything up to it. A few min/max instead of 16 compares.
#pragma unroll
                        for (int g = 0; g < E; g += 4) {
                            u32 c[4];
#pragma unroll
                            for (int j = 0; j < 4; j++)
                                c[j] = (((u32)vs[t][(g + j) / V].get((g + j) % V) & 0x7fffu) << 2) | j;
                            u32 lo1 = min(c[0], c[1]), hi1 = max(c[0], c[1]);
                            u32 lo2 = min(c[2], c[3]), hi2 = max(c[2], c[3]);
                            u32 mid_lo = max(lo1, lo2), mid_hi = min(hi1, hi2);
                            u32 cut = drop == 0 ? 0u
                                    : drop == 1 ? min(lo1, lo2)
                                    : drop == 2 ? min(mid_lo, mid_hi)
                                    : drop == 3 ? max(mid_lo, mid_hi)
                                                : 0xffffffffu;
#pragma unroll
                            for (int j = 0; j < 4; j++) {
                                int e = g + j;
                                if (e >= valid) continue;
                                decide<DT>(vs[t][e / V], e % V, drop > 0 && c[j] <= cut, e, my_pruned, any_cut, keep);
                            }
                        }
                    } else {
#pragma unroll
                        for (int e = 0; e < E; e++) {
                            const int g = e / M * M;
                            u32 rank = 0;
#pragma unroll
                            for (int j = 0; j < M; j++) rank += (keys[g + j] < keys[e]) || (keys[g + j] == keys[e] && g + j < e);
                            if (e < valid) decide<DT>(vs[t][e / V], e % V, rank < drop, e, my_pruned, any_cut, keep);
                        }
                    }
                    if (write_w && any_cut) {
#pragma unroll
                        for (int q = 0; q < NV; q++) store_vec<DT>(w, unit * NV + q, true, vs[t][q]);
                    }
#pragma unroll
                    for (int q = 0; q < NV; q++) store_mask_bits<DT>(mask, unit * NV + q, keep >> (q * V), vs[t][q].valid);
                }
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
// SCALED: of the scaled magnitudes |w| * scale[col] instead (an overflow counts too); segments
// then hold rows of whole vectors, 16-byte aligned. |w| * |scale| has the score's finiteness and
// never a sign bit (a NaN product is the positive canonical NaN), so one integer maximum per
// element finds them; each thread tracks its vectors' column as it steps (no division).
template <int DT, bool SCALED>
__device__ void find_non_finite_impl(const u64* segs, const u64* chunks, u32 nchunks, u64* first) {
    const int V = Ty<DT>::V;
    const u32 bd = blockDim.x;
    for (u32 c = blockIdx.x; c < nchunks; c += gridDim.x) {
        const u64* s = segs + SEGW * chunks[3 * c];
        const void* w = (const void*)s[S_W];
        const float* scale = (const float*)s[S_SCALE];
        u64 n = s[S_N];
        bool aligned = SCALED || s[S_ALIGNED] != 0;
        u64 v0 = chunks[3 * c + 1], nv = chunks[3 * c + 2];
        const u32 nvr = SCALED ? (u32)(s[S_COLS] / V) : 1;
        u32 cv = SCALED ? (u32)((v0 + threadIdx.x) % nvr) : 0;
        u64 mine = ~0ull;
        for (u64 base = v0 + threadIdx.x; base < v0 + nv; base += HU * bd) {
            Vec<DT> vs[HU];
#pragma unroll
            for (int u = 0; u < HU; u++) {
                u64 vi = base + (u64)u * bd;
                if (vi < v0 + nv) load_vec<DT>(w, vi, n, aligned, vs[u]);
                else vs[u].valid = 0;
            }
#pragma unroll
            for (int u = 0; u < HU; u++) {
                u64 vi = base + (u64)u * bd;
                if (!SCALED) {
                    if (vs[u].valid == 0 || !vec_non_finite<DT>(vs[u])) continue;
                    for (int j = 0; j < V; j++)
                        if (j < vs[u].valid && !is_finite_bits(Ty<DT>::f(vs[u].get(j))) && vi * V + j < mine)
                            mine = vi * V + j;
                    continue;
                }
                if (vs[u].valid != 0) {
                    float sc[V];
#pragma unroll
                    for (int q = 0; q < V / 4; q++) {
                        float4 f = __ldg(reinterpret_cast<const float4*>(scale + cv * V + 4 * q));
                        sc[4 * q] = fabsf(f.x);
                        sc[4 * q + 1] = fabsf(f.y);
                        sc[4 * q + 2] = fabsf(f.z);
                        sc[4 * q + 3] = fabsf(f.w);
                    }
                    u32 m = 0, bits[V];
#pragma unroll
                    for (int j = 0; j < V; j++) {
                        bits[j] = __float_as_uint(__fmul_rn(fabsf(Ty<DT>::f(vs[u].get(j))), sc[j]));
                        m = max(m, bits[j]);
                    }
                    if (m >= 0x7f800000u)
                        for (int j = V - 1; j >= 0; j--)
                            if (bits[j] >= 0x7f800000u && vi * V + j < mine) mine = vi * V + j;
                }
                cv += bd;
                while (cv >= nvr) cv -= nvr;
            }
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
// Band selection for bf16 keys (one 16-bit half says everything): a strided sample fixes a narrow
// band of keys that holds the k-th smallest with near certainty; one full pass then counts, per
// segment, the keys below the band in registers and histograms only the keys inside it. Memory
// bound: shared-memory atomics touch ~1% of the elements instead of all of them. If the k-th key
// falls outside the band after all, the host runs the full histogram instead; either way the
// answer is the same, exact one.

#define BAND_MAX 4096

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
        // finiteness branch: the general loop below was bound by integer issue (Nsight Compute on
        // an H200: SM throughput 76%, DRAM 74%). Finiteness is folded into one word per thread
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
// holding the rank-th and the element in it. (One block scanning the whole 1 MiB chunk took
// 70 us, on the device's critical path between the band pass and the read-back.)
#define TIE_PARTS 16

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

// Threshold apply for segments that need no tie ranks (mode 0 or 1): a plain streaming pass over
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
        // Mode 3: ties up to flat index S_TAKE (located by tie_locate) are pruned.
        u64 tie_cut = s[S_MODE] == 3 ? s[S_TAKE] : 0;
        bool located = s[S_MODE] == 3;
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
        // are kept (mode 0, or past the located cut), t + 1 where they go.
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

// ---------------------------------------------------------------------------------------------
// Rows, one warp per row (a row fits a warp's work; no block-wide barriers). Radix select with a
// warp-private 2048-bin histogram in shared memory: digits of 11, 11 and 10 bits, or 11 and 5
// when every key is a bf16 value. Outputs through the segment's S_T / S_TAKE / S_MODE pointers.

#define WARP_BINS 2048
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
// keep 28 warps an SM in flight instead of 16 (measured faster on H100).
#define ROW_REG_V 4
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

#define ROW_BITS 11
#define ROW_BINS (1 << ROW_BITS)
// Candidates a row select copies out at most (a chosen bin holds a few dozen keys).
#define ROW_CAND 256
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
// less and the chosen bin holds fewer keys. On the benchmark's Gaussian 7B-shaped rows the commit
// took 11.0 to 11.1 ms against 11.6 starting at T / 1.4 to 1.4 T (H200, alternating in one call).
// Real weights vary more from row to row: on SmolLM2-135M's the threshold of 40% of rows lies
// within +-10% of the row 64 before, 84% within T / 1.4 to 1.4 T, 99.7% within T / 4 to 4 T, so
// there a block widens after its first misses (a miss costs one more histogram of the row).
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

// Per-row apply as a stream over chunks of vectors: each element compares with its row's
// threshold key and tie cut (S_T, S_TAKE arrays), so the pass runs at memory speed.
template <int DT, int KIND>
__device__ void row_apply_stream_impl(const u64* segs, const u64* chunks, u32 nchunks, u64* pruned) {
    __shared__ u64 shl[40];
    const int V = Ty<DT>::V;
    for (u32 c = blockIdx.x; c < nchunks; c += gridDim.x) {
        const u64* s = segs + SEGW * chunks[3 * c];
        void* w = (void*)s[S_W];
        const float* scale = (const float*)s[S_SCALE];
        u64 n = s[S_N], cols = s[S_COLS];
        bool aligned = s[S_ALIGNED] != 0;
        u8* mask = (u8*)s[S_MASK];
        const u32* row_key = (const u32*)s[S_T];
        const u32* row_cut = (const u32*)s[S_TAKE];
                bool write_w = s[S_WRITE] != 0;
        u64 v0 = chunks[3 * c + 1], nv = chunks[3 * c + 2];
        u64 my_pruned = 0;
        if (aligned && cols % V == 0 && cols <= 0xffffffffull) {
            // Rows of whole vectors: each thread tracks its vector's row and column as it steps
            // (one division per chunk instead of two per vector), and a vector never spans rows.
            const u32 nvr = (u32)(cols / V), bd = blockDim.x;
            u64 row = (v0 + threadIdx.x) / nvr;
            u32 cv = (u32)(v0 + threadIdx.x - row * nvr);
            for (u64 base = v0 + threadIdx.x; base < v0 + nv; base += HU * bd) {
                Vec<DT> vs[HU];
#pragma unroll
                for (int u = 0; u < HU; u++) {
                    u64 vi = base + (u64)u * bd;
                    if (vi < v0 + nv) load_vec<DT>(w, vi, n, true, vs[u]);
                    else vs[u].valid = 0;
                }
#pragma unroll
                for (int u = 0; u < HU; u++) {
                    if (vs[u].valid != 0) {
                        u64 vi = base + (u64)u * bd;
                        u32 keys[V];
                        bool b = false;
                        keys_at<DT, KIND>(vs[u], cv * V, scale, keys, b);
                        u32 T = row_key[row], cut = row_cut[row];
                        u32 keep = 0;
                        bool changed = false;
#pragma unroll
                        for (int j = 0; j < V; j++) {
                            u32 col = cv * V + j;
                            bool cut_here = keys[j] < T || (keys[j] == T && cut != 0xffffffffu && col <= cut);
                            decide<DT>(vs[u], j, cut_here, j, my_pruned, changed, keep);
                        }
                        if (write_w && changed) store_vec<DT>(w, vi, true, vs[u]);
                        store_mask_bits<DT>(mask, vi, keep, V);
                    }
                    cv += bd;
                    while (cv >= nvr) {
                        cv -= nvr;
                        row++;
                    }
                }
            }
            u64 t = block_sum_u64(my_pruned, shl);
            if (threadIdx.x == 0 && t) atomicAdd(pruned + s[S_SLOT], t);
            continue;
        }
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
                u64 e0 = vi * V;
                u64 row = (e0 | cols) >> 32 ? e0 / cols : (u64)((u32)e0 / (u32)cols);
                u64 col = e0 - row * cols;
                u32 T = row_key[row], cut = row_cut[row];
                u32 keep = 0;
                bool changed = false;
#pragma unroll
                for (int j = 0; j < V; j++) {
                    if (j < vs[u].valid) {
                        if (col == cols) {  // the vector runs into the next row
                            row++;
                            col = 0;
                            T = row_key[row];
                            cut = row_cut[row];
                        }
                        bool cut_here = keys[j] < T || (keys[j] == T && cut != 0xffffffffu && col <= cut);
                        decide<DT>(vs[u], j, cut_here, j, my_pruned, changed, keep);
                        col++;
                    }
                }
                if (write_w && changed) store_vec<DT>(w, vi, aligned, vs[u]);
                store_mask_bits<DT>(mask, vi, keep, vs[u].valid);
            }
        }
        u64 t = block_sum_u64(my_pruned, shl);
        if (threadIdx.x == 0 && t) atomicAdd(pruned + s[S_SLOT], t);
    }
}

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
    extern "C" __global__ void __launch_bounds__(256, 2) apply_threshold_##name(const u64* segs, int nsegs, u64 tiles,        \
                                                      u64* status, u32* ticket, u64* pruned) {       \
        apply_threshold_impl<DT, KIND>(segs, nsegs, tiles, status, ticket, pruned);                  \
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

#define MORE_ENTRIES(name, DT, KIND)                                                                 \
    extern "C" __global__ void sample_hist_##name(const u64* segs, const u64* chunks, u32 nchunks,   \
                                                  u32* hists) {                                      \
        sample_hist_impl<DT, KIND>(segs, chunks, nchunks, hists);                                    \
    }                                                                                                \
    extern "C" __global__ void __launch_bounds__(512, 2) band_pass_##name(                          \
        const u64* segs, const u64* chunks, u32 nchunks, const u32* lo, const u32* width, u32* band, \
        u64* below, u32* bad_flag, u64* bad_index, u32* band_chunks, u32 chunk_stride) {             \
        band_pass_impl<DT, KIND>(segs, chunks, nchunks, lo, width, band, below, bad_flag, bad_index,  \
                                 band_chunks, chunk_stride);                                         \
    }                                                                                                \
    extern "C" __global__ void tie_locate_##name(const u64* segs, const u64* chunks,                \
                                                 const u64* items, const u32* band_chunks,           \
                                                 u32 chunk_stride, const u32* lo, u64* out,          \
                                                 u32* parts, u32* done) {                            \
        tie_locate_impl<DT, KIND>(segs, chunks, items, band_chunks, chunk_stride, lo, out, parts,    \
                                  done);                                                             \
    }                                                                                                \
    extern "C" __global__ void apply_stream_##name(const u64* segs, const u64* chunks, u32 nchunks, \
                                                   u64* pruned) {                                    \
        apply_stream_impl<DT, KIND>(segs, chunks, nchunks, pruned);                                  \
    }                                                                                                \
    extern "C" __global__ void row_select_warp_##name(const u64* segs, int nsegs, u64 rows,         \
                                                      u32* bad_flag, u64* bad_index) {               \
        row_select_warp_impl<DT, KIND>(segs, nsegs, rows, bad_flag, bad_index);                      \
    }                                                                                                \
    extern "C" __global__ void __launch_bounds__(256, 2) row_apply_stream_##name(const u64* segs, const u64* chunks, \
                                                       u32 nchunks, u64* pruned) {                   \
        row_apply_stream_impl<DT, KIND>(segs, chunks, nchunks, pruned);                              \
    }                                                                                                \
    extern "C" __global__ void __maxnreg__(ROW_REG_MAXNREG) row_select_reg_##name(const u64* segs, int nsegs, u64 rows,          \
                                                     u32* bad_flag, u64* bad_index) {                \
        row_select_reg_impl<DT, KIND, false, false>(segs, nsegs, rows, bad_flag, bad_index, nullptr, nullptr); \
    }

FOR_DT_KIND(MORE_ENTRIES)

// `_full`: every row of the launch has blockDim.x * ROW_REG_V vectors.
#define MAG_ENTRIES(name, DT, KIND)                                                                  \
    extern "C" __global__ void __maxnreg__(ROW_REG_MAXNREG) row_prune_reg_##name(const u64* segs, int nsegs, u64 rows, \
                                                                          u64* pruned, u64* band_stats) { \
        row_select_reg_impl<DT, KIND, true, false>(segs, nsegs, rows, nullptr, nullptr, pruned, band_stats); \
    }                                                                                                \
    extern "C" __global__ void __maxnreg__(ROW_REG_MAXNREG) row_prune_reg_full_##name(const u64* segs, int nsegs,     \
                                                                               u64 rows, u64* pruned, u64* band_stats) { \
        row_select_reg_impl<DT, KIND, true, true>(segs, nsegs, rows, nullptr, nullptr, pruned, band_stats); \
    }

MAG_ENTRIES(bf16_mag, DT_BF16, K_MAG)
MAG_ENTRIES(bf16_scaled, DT_BF16, K_SCALED)
MAG_ENTRIES(f16_mag, DT_F16, K_MAG)
MAG_ENTRIES(f16_scaled, DT_F16, K_SCALED)
MAG_ENTRIES(f32_mag, DT_F32, K_MAG)
MAG_ENTRIES(f32_scaled, DT_F32, K_SCALED)

#define DT_ENTRIES(name, DT)                                                                         \
    extern "C" __global__ void find_non_finite_##name(const u64* segs, const u64* chunks,           \
                                                      u32 nchunks, u64* first) {                     \
        find_non_finite_impl<DT, false>(segs, chunks, nchunks, first);                               \
    }                                                                                                \
    extern "C" __global__ void apply_mask_##name(const u64* segs, const u64* chunks, u32 nchunks,   \
                                                 u64* pruned) {                                      \
        apply_mask_impl<DT>(segs, chunks, nchunks, pruned);                                          \
    }                                                                                                \
    extern "C" __global__ void find_non_finite_scaled_##name(const u64* segs, const u64* chunks,    \
                                                             u32 nchunks, u64* first) {              \
        find_non_finite_impl<DT, true>(segs, chunks, nchunks, first);                                \
    }

DT_ENTRIES(bf16, DT_BF16)
DT_ENTRIES(f16, DT_F16)
DT_ENTRIES(f32, DT_F32)

