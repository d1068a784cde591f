// Family: N:M selection and apply.

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

