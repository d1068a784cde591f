// Family: applying a threshold (keys below T, and the first `take` equal to T).

// ---------------------------------------------------------------------------------------------
// Threshold apply, in tiles of blockDim * TILE_U vectors. Tiles are taken in order from a
// ticket, so the tie ranks of MODE_RANK_TIES segments can come from a decoupled look-back over the
// segment's earlier tiles (status: one zeroed u64 per tile of the launch).

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
    // Persistent blocks: tiles come from a ticket, in order, so MODE_RANK_TIES look-backs always wait on
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
        if (mode == MODE_RANK_TIES) {
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
            u64 rank = mode == MODE_RANK_TIES ? rank_base[u] : 0;
            bool changed = false;
#pragma unroll
            for (int j = 0; j < V; j++) {
                if (j < vs[u].valid) {
                    u32 k = keys[j];
                    bool cut;
                    if (k < T) cut = true;
                    else if (k > T) cut = false;
                    else if (mode == MODE_KEEP_TIES) cut = false;
                    else if (mode == MODE_PRUNE_TIES) cut = true;
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

