// Family: histograms of score keys (the exact selection's first passes).

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

