// Family: finiteness checks and masks.

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

