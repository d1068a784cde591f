// Family: the streaming per-row apply of row_select's thresholds.

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

