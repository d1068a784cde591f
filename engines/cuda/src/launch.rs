//! The launch of every kernel, each written once here: its entry point's name, block and shared
//! memory (the [`KERNELS`] table), and its arguments typed by the role each plays, so a launch
//! with two device pointers swapped does not compile.

use cudarc::driver::PushKernelArg;

use crate::layout::{ROW_REG_V, TIE_PARTS, TILE_U};
use crate::{
    cfg, row_reg_smem, CudaError, Dt, Gpu, Result, ScoreKind, Source, APPLY_THREADS,
    ROW_REG_MAX_THREADS, ROW_SMEM,
};

/// A family of entry points (`<prefix>...<suffix>`, the element type and score kind between):
/// the block each launch uses (0: shaped per launch) and its dynamic shared memory (for a
/// launch-shaped family, the most it may ask for). What `Gpu::function` and the launches read.
pub(crate) struct KernelSpec {
    pub prefix: &'static str,
    pub suffix: &'static str,
    pub block: u32,
    pub smem: u32,
}

const fn k(prefix: &'static str, suffix: &'static str, block: u32, smem: u32) -> KernelSpec {
    KernelSpec {
        prefix,
        suffix,
        block,
        smem,
    }
}

/// Every kernel family, the more specific entries first.
pub(crate) const KERNEL_TABLE: &[KernelSpec] = &[
    k("hist_high_", "", 1024, 32768 * 4),
    k("hist_low_", "", 1024, 0),
    k("sum_slots", "", 256, 0),
    k("slot_counts", "", 256, 0),
    k("find_slot_bins", "", 256, 0),
    k("apply_threshold_", "", APPLY_THREADS, 0),
    k("row_select_reg_", "", 0, 0),
    k("row_select_warp_", "", 256, ROW_SMEM),
    k(
        "row_prune_reg_",
        "",
        0,
        row_reg_smem(ROW_REG_MAX_THREADS * ROW_REG_V, true),
    ),
    k("row_apply_stream_", "", 256, 0),
    k("sample_hist_", "_mag", 1024, 32768 * 4),
    k("sample_hist_", "", 256, 0),
    k("band_pass_", "", 512, 0),
    k("tie_locate_", "", 512, 0),
    k("expand_chunks", "", 256, 0),
    k("band_choose", "", 1024, 0),
    k("band_resolve", "", 256, 0),
    k("apply_stream_", "", 256, 0),
    k("nm", "", 256, 0),
    k("sqrt_many_f32", "", 256, 0),
    k("find_non_finite", "", 256, 0),
    k("apply_mask_", "", 256, 0),
    k("obs_sweep", "", OBS_THREADS, 0),
];

/// Threads (rows) per block of the column sweep; its shared memory is `OBS_THREADS × b` f32.
pub const OBS_THREADS: u32 = 32;
/// The widest block of columns the sweep takes (its row must fit in shared memory).
pub const OBS_MAX_COLS: u32 = 256;

/// The table entry of entry point `name`.
pub(crate) fn spec(name: &str) -> Result<&'static KernelSpec> {
    KERNEL_TABLE
        .iter()
        .find(|k| name.starts_with(k.prefix) && name.ends_with(k.suffix))
        .ok_or_else(|| CudaError(format!("{name}: no such kernel in the launch table")))
}

macro_rules! device_ptrs {
    ($($(#[$doc:meta])* $name:ident;)*) => {$(
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub struct $name(pub u64);

        impl ArgValue for $name {
            fn push<'a>(&'a self, b: &mut cudarc::driver::LaunchArgs<'a>) {
                b.arg(&self.0);
            }
        }
    )*};
}

device_ptrs! {
    /// Segment descriptors: `SEGW` u64 words each ([`Seg::words`]).
    Segs;
    /// A chunk table: 3 u64 per chunk `{segment, first unit, units}`.
    Chunks;
    /// 65536-bin u32 histograms, one per slot (or per scope).
    Hists;
    /// The high-half bin of each slot (u32), from the first histogram pass.
    HighBins;
    /// A u32 set when a non-finite score is seen.
    BadFlag;
    /// u64 per slot (set to !0 before): the first non-finite element's index.
    BadIndex;
    /// 65536 u64: a histogram summed over slots.
    Totals;
    /// u64 per slot: the count in a bin.
    CountsAt;
    /// u64 per slot: the count below a bin.
    CountsBelow;
    /// u64 per slot or scope: the rank k to find.
    Ks;
    /// u32 per slot: the bin found.
    Bins;
    /// u64 per apply tile (zeroed): the look-back status.
    TileStatus;
    /// A zeroed u32: the next tile to take.
    Ticket;
    /// u64 per slot: weights pruned.
    Pruned;
    /// Two u64 (or 0): rows that tried a band, rows that missed it.
    BandStats;
    /// u32 per scope: the band's first key bin.
    BandLo;
    /// u32 per scope: the band's width (0: no band).
    BandWidth;
    /// `BAND_MAX` u32 per segment: the band histograms.
    BandHists;
    /// u64 per segment: keys below the band.
    BelowBand;
    /// The band pass's per-chunk counts (`chunk_stride` u32 per chunk).
    BandChunks;
    /// `tie_locate` items: 5 u64 each.
    TieItems;
    /// u64 per item: the located flat index.
    TieCuts;
    /// `TIE_PARTS` u32 per item (zeroed).
    TieParts;
    /// u32 per item (zeroed).
    TieDone;
    /// nseg + 1 u64: each segment's first chunk ([`chunk_starts`]).
    ChunkStarts;
    /// u64 per segment: its units.
    SegUnits;
    /// 2 u64 per scope: the sample ranks bounding the band.
    SampleRanks;
    /// u32 per scope: its first segment.
    FirstSeg;
    /// u32 per scope: the band bin of its k-th key (!0 on a miss).
    BandBin;
    /// u64 per segment: keys below the chosen bin.
    SegBelow;
    /// u64 per segment: keys in the chosen bin.
    SegTies;
    /// `{in, out, n}` u64 words per f32 array.
    SqrtTable;
    /// u64 per slot (set to !0 before): the first non-finite element's index.
    FirstBad;
    /// f32 rows × b (row stride given): the weights a column sweep updates.
    SweepW;
    /// f32 b × b (row stride given): the block of `H⁻¹`'s upper Cholesky factor.
    SweepHinv;
    /// u8 rows × b: 1 = pruned.
    SweepPrune;
    /// f32 rows × b: the sweep's errors.
    SweepErr;
}

/// A kernel argument pushed into a launch (the values are copied by the driver at launch).
pub(crate) trait ArgValue {
    fn push<'a>(&'a self, b: &mut cudarc::driver::LaunchArgs<'a>);
}

impl ArgValue for u64 {
    fn push<'a>(&'a self, b: &mut cudarc::driver::LaunchArgs<'a>) {
        b.arg(self);
    }
}

impl ArgValue for u32 {
    fn push<'a>(&'a self, b: &mut cudarc::driver::LaunchArgs<'a>) {
        b.arg(self);
    }
}

impl ArgValue for i32 {
    fn push<'a>(&'a self, b: &mut cudarc::driver::LaunchArgs<'a>) {
        b.arg(self);
    }
}

impl Gpu {
    /// Pass 1: histograms of the high key halves. `segs` holds 6 u64 per segment
    /// `{ptr, scale, n, cols, slot, aligned}`, `chunks` 3 u64 per chunk `{segment, first vector,
    /// vectors}`; `hists` 65536 u32 per slot; `bad_flag` u32, `bad_index` one u64 per slot
    /// (init !0): the first non-finite element's index.
    #[allow(clippy::too_many_arguments)]
    pub fn hist_high(
        &self,
        dt: Dt,
        kind: ScoreKind,
        segs: Segs,
        chunks: Chunks,
        nchunks: u32,
        hists: Hists,
        bad_flag: BadFlag,
        bad_index: BadIndex,
    ) -> Result<()> {
        self.launch(
            &format!("hist_high_{}_{}", dt.name(), kind.name()),
            (nchunks as u64).min(self.sms as u64),
            &[&segs, &chunks, &nchunks, &hists, &bad_flag, &bad_index],
        )
    }

    /// Pass 2: histograms of the low key halves of keys whose high half is their slot's entry
    /// of `his` (u32 per slot).
    #[allow(clippy::too_many_arguments)]
    pub fn hist_low(
        &self,
        dt: Dt,
        kind: ScoreKind,
        segs: Segs,
        chunks: Chunks,
        nchunks: u32,
        his: HighBins,
        hists: Hists,
    ) -> Result<()> {
        self.launch(
            &format!("hist_low_{}_{}", dt.name(), kind.name()),
            (nchunks as u64).min(self.sms as u64 * 4),
            &[&segs, &chunks, &nchunks, &his, &hists],
        )
    }

    /// Totals over `slots` histograms into `total` (65536 u64).
    pub fn sum_slots(&self, hists: Hists, slots: u32, total: Totals) -> Result<()> {
        self.launch("sum_slots", 256, &[&hists, &slots, &total])
    }

    /// Per slot: the count in `bin` (into `at`) and below it (into `below`), u64 each.
    pub fn slot_counts(
        &self,
        hists: Hists,
        slots: u32,
        bin: u32,
        at: CountsAt,
        below: CountsBelow,
    ) -> Result<()> {
        self.launch(
            "slot_counts",
            slots as u64,
            &[&hists, &slots, &bin, &at, &below],
        )
    }

    /// Per slot: the bin of its `ks[slot]`-th smallest key (u32; !0 when k is 0), the count
    /// before that bin and in it (u64 each).
    #[allow(clippy::too_many_arguments)]
    pub fn find_slot_bins(
        &self,
        hists: Hists,
        slots: u32,
        ks: Ks,
        bins: Bins,
        before: CountsBelow,
        at: CountsAt,
    ) -> Result<()> {
        self.launch(
            "find_slot_bins",
            slots as u64,
            &[&hists, &slots, &ks, &bins, &before, &at],
        )
    }

    /// Tiles an apply launch needs for `n` elements of `dt`.
    pub fn apply_tiles(&self, dt: Dt, n: u64) -> u64 {
        n.div_ceil(dt.per_vector())
            .div_ceil(APPLY_THREADS as u64 * TILE_U)
    }

    /// Launches `name` with its [`KERNEL_TABLE`] block and shared memory.
    fn launch(&self, name: &str, grid: u64, args: &[&dyn ArgValue]) -> Result<()> {
        let k = spec(name)?;
        self.launch_shaped(name, grid, k.block, k.smem, args)
    }

    /// Launches `name` with a block and shared memory chosen for this launch (the
    /// register-resident row kernels, shaped to the longest row).
    fn launch_shaped(
        &self,
        name: &str,
        grid: u64,
        block: u32,
        smem: u32,
        args: &[&dyn ArgValue],
    ) -> Result<()> {
        let f = self.function(name)?;
        let s = self.stream();
        let mut b = s.launch_builder(&f);
        for a in args {
            a.push(&mut b);
        }
        // SAFETY: every entry point's parameters are listed in `args` in order and with the
        // kernel's types; pointers come from live libtorch tensors the caller holds.
        unsafe { b.launch(cfg(grid, block, smem)) }.map_err(|e| CudaError::at(name, e))?;
        Ok(())
    }

    /// Threshold apply over `nsegs` segments whose tiles (`Seg::first`) total `tiles`.
    /// `status`: one zeroed u64 per tile; `ticket`: a zeroed u32; `pruned`: u64 per slot.
    #[allow(clippy::too_many_arguments)]
    pub fn apply_threshold(
        &self,
        dt: Dt,
        kind: ScoreKind,
        segs: Segs,
        nsegs: i32,
        tiles: u64,
        status: TileStatus,
        ticket: Ticket,
        pruned: Pruned,
    ) -> Result<()> {
        let name = format!("apply_threshold_{}_{}", dt.name(), kind.name());
        // Persistent blocks: a few per SM, each taking tiles from the ticket until none is left.
        self.launch(
            &name,
            tiles.min(self.sms as u64 * 8),
            &[&segs, &nsegs, &tiles, &status, &ticket, &pruned],
        )
    }

    /// Per-row selection over the rows of the segments (`Seg::first` = first row), outputs
    /// through the per-segment pointers `t`/`take`/`mode`.
    ///
    /// `max_cols`: the longest row of the launch. Rows of whole vectors up to
    /// [`ROW_REG_MAX_THREADS`] × [`ROW_REG_V`] vectors are selected by a block each holding the
    /// row in registers; others by a warp each re-reading the row.
    #[allow(clippy::too_many_arguments)]
    pub fn row_select(
        &self,
        dt: Dt,
        kind: ScoreKind,
        segs: Segs,
        nsegs: i32,
        rows: u64,
        max_cols: u64,
        whole_vectors: bool,
        bad_flag: BadFlag,
        bad_index: BadIndex,
    ) -> Result<()> {
        let nvec = max_cols.div_ceil(dt.per_vector());
        if whole_vectors && nvec <= ROW_REG_MAX_THREADS * ROW_REG_V {
            let name = format!("row_select_reg_{}_{}", dt.name(), kind.name());
            let (grid, threads, smem) = self.row_reg_shape(&name, dt, rows, max_cols, false)?;
            self.launch_shaped(
                &name,
                grid,
                threads,
                smem,
                &[&segs, &nsegs, &rows, &bad_flag, &bad_index],
            )
        } else {
            let name = format!("row_select_warp_{}_{}", dt.name(), kind.name());
            let grid = rows.div_ceil(8).min(self.sms as u64 * 3);
            self.launch(&name, grid, &[&segs, &nsegs, &rows, &bad_flag, &bad_index])
        }
    }

    /// Per-row selection and pruning in one pass (magnitude or scaled-magnitude sources only):
    /// `Seg::k` weights of every row pruned, `Seg::first` the segment's first row in the launch,
    /// the mask written when `Seg::mask` is set and the weight when `Seg::write`; counts per slot
    /// into `pruned`. Rows must be whole vectors, at most [`ROW_REG_MAX_THREADS`] ×
    /// [`ROW_REG_V`] of them ([`Gpu::row_prune_fits`]), and every score finite (checked before:
    /// the pass writes as it goes). `same_length`: every row of the launch has `max_cols`
    /// weights; when they also fill whole warps' registers (a multiple of 32 × [`ROW_REG_V`]
    /// vectors, as LLM shapes do), a kernel without per-vector bounds takes them. Each row's
    /// selection starts from a band around the threshold of the block's previous row of the same
    /// segment, a block's first row of a segment from the segment's hint (`Seg::t`: a pointer to
    /// a u32 threshold key of one of its rows, or 0 for none); `band_stats` (0 for none, else two
    /// u64) receives the rows that tried a band and the rows whose threshold lay outside it (they
    /// are selected without, exactly the same).
    #[allow(clippy::too_many_arguments)]
    pub fn row_prune(
        &self,
        dt: Dt,
        kind: ScoreKind,
        segs: Segs,
        nsegs: i32,
        rows: u64,
        max_cols: u64,
        same_length: bool,
        pruned: Pruned,
        band_stats: BandStats,
    ) -> Result<()> {
        let full = same_length && Self::row_fills_warps(dt, max_cols);
        let name = format!(
            "row_prune_reg_{}{}_{}",
            if full { "full_" } else { "" },
            dt.name(),
            kind.name()
        );
        let (grid, threads, smem) = self.row_reg_shape(&name, dt, rows, max_cols, true)?;
        self.launch_shaped(
            &name,
            grid,
            threads,
            smem,
            &[&segs, &nsegs, &rows, &pruned, &band_stats],
        )
    }

    /// Whether rows of `cols` weights give every thread of [`Gpu::row_prune`]'s whole-warp
    /// blocks exactly [`ROW_REG_V`] vectors (the kernel without per-vector bounds).
    pub fn row_fills_warps(dt: Dt, cols: u64) -> bool {
        let v = dt.per_vector();
        cols % v == 0 && (cols / v) % (32 * ROW_REG_V) == 0
    }

    /// Whether [`Gpu::row_prune`] takes rows of `src`.
    pub fn row_prune_fits(src: &Source) -> bool {
        let v = src.dt.per_vector();
        src.kind != ScoreKind::Dense
            && src.aligned()
            && src.cols % v == 0
            && src.cols / v <= ROW_REG_MAX_THREADS * ROW_REG_V
    }

    /// Launch shape of the register-resident row kernels: the fewest warps that hold the longest
    /// row in registers (more rows in flight per SM, and cheaper barriers, than a fixed large
    /// block), as many blocks as are resident on the SMs at once (the blocks are persistent), and
    /// the shared memory of [`row_reg_smem`].
    fn row_reg_shape(
        &self,
        name: &str,
        dt: Dt,
        rows: u64,
        max_cols: u64,
        row_buffers: bool,
    ) -> Result<(u64, u32, u32)> {
        let nvec = max_cols.div_ceil(dt.per_vector());
        let threads = nvec.div_ceil(ROW_REG_V).div_ceil(32).max(1) * 32;
        let smem = row_reg_smem(nvec, row_buffers);
        let per_sm = self
            .function(name)?
            .occupancy_max_active_blocks_per_multiprocessor(threads as u32, smem as usize, None)
            .map_err(|e| CudaError::at(name, e))?
            .max(1) as u64;
        Ok((rows.min(self.sms as u64 * per_sm), threads as u32, smem))
    }

    /// Per-row apply of `row_select`'s thresholds (key and tie-cut arrays through `Seg::t` and
    /// `Seg::take`), streaming over chunks of vectors.
    pub fn row_apply(
        &self,
        dt: Dt,
        kind: ScoreKind,
        segs: Segs,
        chunks: Chunks,
        nchunks: u32,
        pruned: Pruned,
    ) -> Result<()> {
        let name = format!("row_apply_stream_{}_{}", dt.name(), kind.name());
        self.launch(
            &name,
            (nchunks as u64).min(self.sms as u64 * 4),
            &[&segs, &chunks, &nchunks, &pruned],
        )
    }

    /// Sampling for band selection: every `Seg::scope`-th vector of each segment into the 65536-bin
    /// histogram of its `Seg::slot` (the scope); chunks count sampled vectors.
    #[allow(clippy::too_many_arguments)]
    pub fn sample_hist(
        &self,
        dt: Dt,
        kind: ScoreKind,
        segs: Segs,
        chunks: Chunks,
        nchunks: u32,
        hists: Hists,
    ) -> Result<()> {
        let name = format!("sample_hist_{}_{}", dt.name(), kind.name());
        // Magnitudes count in a 32768-bin shared histogram per block (see the kernel).
        self.launch(
            &name,
            (nchunks as u64).min(self.sms as u64 * 8),
            &[&segs, &chunks, &nchunks, &hists],
        )
    }

    /// The band pass (bf16 keys): per segment, keys below its scope's band counted into `below`
    /// (u64 per segment) and keys inside it histogrammed into `band` (`BAND_MAX` u32 per segment).
    #[allow(clippy::too_many_arguments)]
    pub fn band_pass(
        &self,
        dt: Dt,
        kind: ScoreKind,
        segs: Segs,
        chunks: Chunks,
        nchunks: u32,
        lo: BandLo,
        width: BandWidth,
        band: BandHists,
        below: BelowBand,
        bad_flag: BadFlag,
        bad_index: BadIndex,
        band_chunks: BandChunks,
        chunk_stride: u32,
    ) -> Result<()> {
        let name = format!("band_pass_{}_{}", dt.name(), kind.name());
        self.launch(
            &name,
            (nchunks as u64).min(self.sms as u64 * 4),
            &[
                &segs,
                &chunks,
                &nchunks,
                &lo,
                &width,
                &band,
                &below,
                &bad_flag,
                &bad_index,
                &band_chunks,
                &chunk_stride,
            ],
        )
    }

    /// Per item (5 u64: segment, first chunk, chunks, band bin, take; chunks 0: nothing to
    /// locate), the flat index of the segment's take-th key equal to the bin's threshold, from
    /// the band pass's per-chunk counts (`band_chunks`, `chunk_stride` words per chunk) and one
    /// scan of one chunk by `TIE_PARTS` blocks. `parts` (`TIE_PARTS` u32 per item) and `done`
    /// (u32 per item) must be zeroed.
    #[allow(clippy::too_many_arguments)]
    pub fn tie_locate(
        &self,
        dt: Dt,
        kind: ScoreKind,
        segs: Segs,
        chunks: Chunks,
        items: TieItems,
        nitems: u32,
        band_chunks: BandChunks,
        chunk_stride: u32,
        lo: BandLo,
        out: TieCuts,
        parts: TieParts,
        done: TieDone,
    ) -> Result<()> {
        let name = format!("tie_locate_{}_{}", dt.name(), kind.name());
        self.launch(
            &name,
            nitems as u64 * TIE_PARTS,
            &[
                &segs,
                &chunks,
                &items,
                &band_chunks,
                &chunk_stride,
                &lo,
                &out,
                &parts,
                &done,
            ],
        )
    }

    /// The chunk table (see `chunk_starts`) written at `out` from `starts` (`chunk_starts`, nseg + 1
    /// words) and `units` (nseg words) on the device, so the host never builds or copies a 7B
    /// model's table of thousands of chunks.
    pub fn expand_chunks(
        &self,
        starts: ChunkStarts,
        units: SegUnits,
        nseg: u32,
        chunk: u64,
        nchunks: u64,
        out: Chunks,
    ) -> Result<()> {
        self.launch(
            "expand_chunks",
            nchunks.div_ceil(256).clamp(1, self.sms as u64 * 8),
            &[&starts, &units, &nseg, &chunk, &out],
        )
    }

    /// Per scope, its band from its 65536-bin sample histogram: the bins of two sample ranks
    /// (`ranks`: 2 u64 per scope; 0 and !0 leave that end open, at `floor_key` and 0xffff) into
    /// `lo` and `width` (u32 per scope); width 0 when the band is empty or wider than `band_max`.
    /// Also sets `nseg` u64 first-bad indices at `bad_index` to !0 for the band pass.
    #[allow(clippy::too_many_arguments)]
    pub fn band_choose(
        &self,
        nscopes: u32,
        sample: Hists,
        ranks: SampleRanks,
        floor_key: u32,
        band_max: u32,
        lo: BandLo,
        width: BandWidth,
        bad_index: BadIndex,
        nseg: u32,
    ) -> Result<()> {
        self.launch(
            "band_choose",
            nscopes as u64,
            &[
                &sample, &ranks, &floor_key, &band_max, &lo, &width, &bad_index, &nseg,
            ],
        )
    }

    /// Per scope, the band bin of its k-th smallest key (or !0 on a miss) and, per segment, the
    /// counts below that bin and in it, and a `tie_locate` item (whose chunks are 0 when the
    /// segment needs no locating; `chunk_starts`: as for `expand_chunks`).
    #[allow(clippy::too_many_arguments)]
    pub fn band_resolve(
        &self,
        nscopes: u32,
        band: BandHists,
        below: BelowBand,
        first_seg: FirstSeg,
        width: BandWidth,
        ks: Ks,
        chunk_starts: ChunkStarts,
        chunk_stride: u32,
        out_bin: BandBin,
        seg_below: SegBelow,
        seg_ties: SegTies,
        items: TieItems,
    ) -> Result<()> {
        self.launch(
            "band_resolve",
            nscopes as u64,
            &[
                &band,
                &below,
                &first_seg,
                &width,
                &ks,
                &chunk_starts,
                &chunk_stride,
                &out_bin,
                &seg_below,
                &seg_ties,
                &items,
            ],
        )
    }

    /// Threshold apply without tie ranks (modes 0, 1 and 3: ties kept, pruned, or pruned up to a
    /// located flat index), streaming over chunks of vectors.
    #[allow(clippy::too_many_arguments)]
    pub fn apply_stream(
        &self,
        dt: Dt,
        kind: ScoreKind,
        segs: Segs,
        chunks: Chunks,
        nchunks: u32,
        pruned: Pruned,
    ) -> Result<()> {
        let name = format!("apply_stream_{}_{}", dt.name(), kind.name());
        self.launch(
            &name,
            (nchunks as u64).min(self.sms as u64 * 4),
            &[&segs, &chunks, &nchunks, &pruned],
        )
    }

    /// Units an N:M launch counts per segment: groups of `max(m, vector)` elements on the fast
    /// path (`m` 4 or 8, aligned rows), single groups otherwise.
    pub fn nm_units(&self, src: &Source, m: u64) -> (u64, bool) {
        let fast = (m == 4 || m == 8) && src.aligned() && src.cols % m == 0;
        if fast {
            (src.n.div_ceil(m.max(src.dt.per_vector())), true)
        } else {
            (src.n / m, false)
        }
    }

    /// N:M over chunks of units (see [`Gpu::nm_units`]); all segments of one launch share `m`
    /// and the fast or generic path.
    #[allow(clippy::too_many_arguments)]
    pub fn nm(
        &self,
        dt: Dt,
        kind: ScoreKind,
        m: u64,
        fast: bool,
        segs: Segs,
        chunks: Chunks,
        nchunks: u32,
        pruned: Pruned,
    ) -> Result<()> {
        let prefix = match (fast, m) {
            (true, 4) => "nm4",
            (true, 8) => "nm8",
            _ => "nm",
        };
        let name = format!("{prefix}_{}_{}", dt.name(), kind.name());
        self.launch(
            &name,
            (nchunks as u64).min(self.sms as u64 * 8),
            &[&segs, &chunks, &nchunks, &pruned],
        )
    }

    /// `out = sqrtf(in)` (correctly rounded, as libtorch's) for `count` f32 arrays; `table`
    /// holds `{in, out, n}` u64 words per array. A block per array.
    pub fn sqrt_many(&self, table: SqrtTable, count: u32) -> Result<()> {
        self.launch("sqrt_many_f32", count as u64, &[&table, &count])
    }

    /// The smallest flat index of a non-finite element per slot into `first` (u64 per slot,
    /// set to !0 before), over chunks of vectors. `scaled`: of the scaled magnitudes
    /// `|w| * scale[col]` instead (an overflow counts); segments then hold rows of whole 16-byte
    /// vectors, aligned.
    pub fn find_non_finite(
        &self,
        dt: Dt,
        scaled: bool,
        segs: Segs,
        chunks: Chunks,
        nchunks: u32,
        first: FirstBad,
    ) -> Result<()> {
        let what = if scaled { "_scaled" } else { "" };
        let name = format!("find_non_finite{what}_{}", dt.name());
        self.launch(
            &name,
            (nchunks as u64).min(self.sms as u64 * 8),
            &[&segs, &chunks, &nchunks, &first],
        )
    }

    /// SparseGPT's column sweep (`kernels/obs.cu`) over `rows` rows of a block of `b` columns
    /// (at most [`OBS_MAX_COLS`]); `nm = (n, m)` decides N:M groups in the sweep.
    #[allow(clippy::too_many_arguments)]
    pub fn obs_sweep(
        &self,
        w: SweepW,
        w_stride: u64,
        hinv: SweepHinv,
        h_stride: u64,
        prune: SweepPrune,
        err: SweepErr,
        rows: u32,
        b: u32,
        nm: Option<(u32, u32)>,
    ) -> Result<()> {
        if b > OBS_MAX_COLS {
            return Err(CudaError(format!(
                "obs_sweep: blocks of {b} columns; at most {OBS_MAX_COLS}"
            )));
        }
        let (n, m) = nm.unwrap_or((0, 0));
        self.launch_shaped(
            "obs_sweep",
            (rows as u64).div_ceil(OBS_THREADS as u64),
            OBS_THREADS,
            OBS_THREADS * b * 4,
            &[
                &w, &w_stride, &hinv, &h_stride, &prune, &err, &rows, &b, &n, &m,
            ],
        )
    }

    /// Zeroes the elements whose mask bit is 0 (mask pointer per segment); counts per slot.
    pub fn apply_mask(
        &self,
        dt: Dt,
        segs: Segs,
        chunks: Chunks,
        nchunks: u32,
        pruned: Pruned,
    ) -> Result<()> {
        let name = format!("apply_mask_{}", dt.name());
        self.launch(
            &name,
            (nchunks as u64).min(self.sms as u64 * 8),
            &[&segs, &chunks, &nchunks, &pruned],
        )
    }
}
