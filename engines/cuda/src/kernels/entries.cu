// The `extern "C"` entry points NVRTC exports, one per element type and score kind.

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

