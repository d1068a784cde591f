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

// DT_*, K_* and every other constant the host shares are defined before this file, in
// layout.cuh, generated from src/layout.rs.

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
// a 7B model is a handful of launches, not hundreds. A segment is SEGW u64 words, word S_X
// holding the field src/layout.rs documents as `word::X` (S_MODE holds an ApplyMode).
#define HU 8  // vectors in flight per thread in the streaming kernels
#define HH 4  // the same for the full-histogram kernel (1024 threads a block)
#define NMU 4  // N:M units in flight per thread
//
// Chunk tables split segments into pieces of work: 3 u64 per chunk {segment, first, count},
// in vectors (or N:M units).

