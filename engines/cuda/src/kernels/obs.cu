// Family: the optimal-brain-surgeon column sweep of SparseGPT (host operation `obs_sweep`),
// operation for operation as birdbone-select's `obs::sweep`, so CPU and GPU agree bit for bit.
//
// One thread per row: a row walks the block's columns in order, which no two threads share, so
// there is no synchronisation. The row lives in shared memory with its elements strided by the
// block size (element j of thread t at sh[j * T + t]), so a warp's accesses fall in distinct
// banks; the row of hinv every thread reads at step i is the same, a broadcast through L1.
// Products and differences are rounded separately (no FMA), as the reference's outer product
// followed by a subtraction rounds them.
//
// w: f32 rows x b at row stride ws (updated; pruned entries become 0); hinv: f32 b x b at row
// stride hs; prune, err: rows x b contiguous; nm_m = 0: prune is read as given, else the
// nm_m - nm_n smallest w^2 / d^2 of each group are marked at the group's first column.
extern "C" __global__ void obs_sweep(float* w, u64 ws, const float* hinv, u64 hs,
                                     unsigned char* prune, float* err, u32 rows, u32 b,
                                     u32 nm_n, u32 nm_m) {
    // The one dynamic shared array of the whole source is declared u32 by the other families.
    extern __shared__ u32 sh[];
    const u32 T = blockDim.x;
    const u64 r = (u64)blockIdx.x * T + threadIdx.x;
    if (r >= rows) return;
    float* my = reinterpret_cast<float*>(sh) + threadIdx.x;
    float* wr = w + r * ws;
    unsigned char* pr = prune + r * b;
    float* er = err + r * b;
    for (u32 j = 0; j < b; j++) my[j * T] = wr[j];
    for (u32 i = 0; i < b; i++) {
        if (nm_m != 0 && i % nm_m == 0) {
            for (u32 a = 0; a < nm_m; a++) {
                float da = __ldg(hinv + (u64)(i + a) * hs + i + a);
                float wa = my[(i + a) * T];
                float sa = __fdiv_rn(__fmul_rn(wa, wa), __fmul_rn(da, da));
                u32 rank = 0;
                for (u32 o = 0; o < nm_m; o++) {
                    float d = __ldg(hinv + (u64)(i + o) * hs + i + o);
                    float x = my[(i + o) * T];
                    float so = __fdiv_rn(__fmul_rn(x, x), __fmul_rn(d, d));
                    if (so < sa || (so == sa && o < a)) rank++;
                }
                pr[i + a] = rank < nm_m - nm_n ? 1 : 0;
            }
        }
        float wi = my[i * T];
        float q = pr[i] ? 0.f : wi;
        float e = __fdiv_rn(__fsub_rn(wi, q), __ldg(hinv + (u64)i * hs + i));
        const float* hrow = hinv + (u64)i * hs;
        for (u32 j = i + 1; j < b; j++) my[j * T] = __fsub_rn(my[j * T], __fmul_rn(e, __ldg(hrow + j)));
        wr[i] = q;
        er[i] = e;
    }
}
