//! Birdbone's CUDA kernels: exact selection (histograms of score keys, per-row radix select,
//! N:M) and in-place pruning with deterministic tie splitting, compiled at run time with NVRTC
//! through cudarc, so building needs no CUDA toolkit and CI builds without a GPU.
//!
//! The kernels implement the rules of `birdbone-select` bit for bit. They work on raw device
//! pointers of memory the caller owns (libtorch tensors), on the stream libtorch uses for the
//! device; results land in caller-provided device buffers. The module is compiled once per
//! process and device and cached.

mod stream;

use std::{
    collections::HashMap,
    sync::{Arc, LazyLock},
};

use cudarc::{
    driver::{
        sys::CUfunction_attribute_enum, CudaContext, CudaFunction, CudaModule, CudaStream,
        LaunchConfig, PushKernelArg,
    },
    nvrtc::{compile_ptx_with_opts, CompileOptions},
};
use parking_lot::Mutex;

pub use stream::torch_current_stream;

/// The CUDA C++ source of every kernel.
pub const KERNELS: &str = include_str!("kernels.cu");

/// A CUDA failure, with what was being done.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CudaError(pub String);

impl CudaError {
    fn at(what: &str, e: impl std::fmt::Display) -> CudaError {
        CudaError(format!("{what}: {e}"))
    }
}

type Result<T> = std::result::Result<T, CudaError>;

/// Element type of the data a kernel reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dt {
    /// bfloat16.
    BF16,
    /// IEEE half.
    F16,
    /// f32.
    F32,
}

impl Dt {
    /// Elements per 16-byte vector.
    pub fn per_vector(self) -> u64 {
        match self {
            Dt::F32 => 4,
            _ => 8,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Dt::BF16 => "bf16",
            Dt::F16 => "f16",
            Dt::F32 => "f32",
        }
    }
}

/// How scores are derived from the data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ScoreKind {
    /// `|w|`.
    Magnitude,
    /// `|w| * scale[col]`.
    Scaled,
    /// The data are the scores.
    Dense,
}

impl ScoreKind {
    fn name(self) -> &'static str {
        match self {
            ScoreKind::Magnitude => "mag",
            ScoreKind::Scaled => "scaled",
            ScoreKind::Dense => "dense",
        }
    }
}

/// What to read: data pointer, element type, score kind, and the column scale (0 if none).
#[derive(Clone, Copy, Debug)]
pub struct Source {
    /// Device pointer of the first element.
    pub ptr: u64,
    /// Element type.
    pub dt: Dt,
    /// Score kind.
    pub kind: ScoreKind,
    /// Device pointer of the f32 column scale (`Scaled` only), else 0.
    pub scale: u64,
    /// Elements.
    pub n: u64,
    /// Row length.
    pub cols: u64,
}

impl Source {
    /// Whether 16-byte vector loads are allowed.
    pub fn aligned(&self) -> bool {
        self.ptr % 16 == 0
    }
}

/// Words per segment descriptor (see the kernel source).
pub const SEGW: usize = 16;

/// One segment of a batched launch: a parameter (or score tensor) and what to do with it. Laid
/// out as `SEGW` u64 words by [`Seg::words`]; fields a kernel does not use stay 0.
#[derive(Clone, Copy, Debug, Default)]
pub struct Seg {
    /// Data pointer.
    pub w: u64,
    /// f32 column-scale pointer, or 0.
    pub scale: u64,
    /// Elements.
    pub n: u64,
    /// Row length.
    pub cols: u64,
    /// 16-byte aligned data.
    pub aligned: bool,
    /// Index into per-segment outputs.
    pub slot: u64,
    /// Mask pointer, or 0.
    pub mask: u64,
    /// Threshold key (apply), or the per-row key array (rows).
    pub t: u64,
    /// Ties to prune (apply), or the per-row take array (rows).
    pub take: u64,
    /// Apply mode, or the per-row ties array (rows).
    pub mode: u64,
    /// First tile or row of the segment in the launch.
    pub first: u64,
    /// Per-row count (row select).
    pub k: u64,
    /// Write the data (else only the mask).
    pub write: bool,
    /// N of N:M.
    pub nkeep: u64,
    /// M of N:M.
    pub m: u64,
    /// Selection scope (band pass), or the sample stride in vectors (sampling).
    pub scope: u64,
}

impl Seg {
    /// A segment reading `src`.
    pub fn of(src: &Source, slot: u64) -> Seg {
        Seg {
            w: src.ptr,
            scale: src.scale,
            n: src.n,
            cols: src.cols,
            aligned: src.aligned(),
            slot,
            ..Default::default()
        }
    }
    /// The descriptor words, as the kernels read them (i64 for upload through libtorch).
    pub fn words(&self) -> [i64; SEGW] {
        [
            self.w as i64,
            self.scale as i64,
            self.n as i64,
            self.cols as i64,
            self.aligned as i64,
            self.slot as i64,
            self.mask as i64,
            self.t as i64,
            self.take as i64,
            self.mode as i64,
            self.first as i64,
            self.k as i64,
            self.write as i64,
            self.nkeep as i64,
            self.m as i64,
            self.scope as i64,
        ]
    }
}

/// Vectors per histogram chunk when several parameters share one launch: large enough that
/// flushing a block's shared histogram is a small fraction of its work.
pub const CHUNK_VECTORS: u64 = 1 << 18;
/// Bins per key-half histogram.
pub const BINS: usize = 65536;
/// Vectors per thread in an apply tile.
const TILE_U: u64 = 8;
/// Blocks per `tie_locate` item (as `TIE_PARTS` in the kernels).
pub const TIE_PARTS: u64 = 16;

/// Bins of a band histogram (as `BAND_MAX` in the kernels).
pub const BAND_MAX: usize = 4096;
/// Dynamic shared memory of a register-resident row kernel for rows of `nvec` vectors: a
/// 2048-bin histogram, 256 candidate keys (ROW_BINS, ROW_CAND in the kernels) and, for
/// `row_prune`, two row buffers (one row streams in while the other is selected). 256
/// candidates, not 512 (a band's chosen bin holds a key or two, and at most twice a block's
/// threads are ranked): seven blocks of 4 096-weight rows then need 194 KiB with the static and
/// reserved shared memory, under the 196 KiB carve-out, which leaves L1 60 KiB for the column
/// scales every row re-reads (the Wanda commit measured 0.35 ms faster on H100).
fn row_reg_smem(nvec: u64, row_buffers: bool) -> u32 {
    ((2048 + 256) * 4 + if row_buffers { 2 * nvec * 16 } else { 0 }) as u32
}

/// Shared memory of a warp-per-row select block: eight warps with a 2048-bin histogram each.
const ROW_SMEM: u32 = 8 * 2048 * 4;
/// Vectors per thread of the register-resident row select (`ROW_REG_V` in the kernels): rows of
/// whole vectors up to [`ROW_REG_MAX_THREADS`] times this many vectors are selected by a block
/// each.
pub const ROW_REG_V: u64 = 4;
/// Largest block of the register-resident row kernels (capped at 72 registers a thread,
/// `ROW_REG_MAXNREG`, so a block of 896 fits an SM's register file): rows up to 28 672 bf16 or
/// f16 weights (14 336 f32).
pub const ROW_REG_MAX_THREADS: u64 = 896;
const APPLY_THREADS: u32 = 256;

/// The chunked kernels split segments into chunks of at most `chunk` units each, described by a
/// table of 3 u64 per chunk `{segment, first unit, units}` that `Gpu::expand_chunks` builds on the
/// device from this: each segment's first chunk, then the number of chunks.
pub fn chunk_starts(units: &[u64], chunk: u64) -> Vec<i64> {
    let mut out = Vec::with_capacity(units.len() + 1);
    let mut at = 0u64;
    out.push(0);
    for &u in units {
        at += u.div_ceil(chunk);
        out.push(at as i64);
    }
    out
}

/// One device's compiled kernels.
pub struct Gpu {
    ctx: Arc<CudaContext>,
    module: Arc<CudaModule>,
    sms: u32,
    functions: Mutex<HashMap<String, Arc<CudaFunction>>>,
    build: KernelBuild,
}

/// How a device's kernels were obtained.
#[derive(Clone, Debug)]
pub struct KernelBuild {
    /// Seconds from source (or cache) to a loaded module.
    pub seconds: f64,
    /// `sm_90`-style machine code, or `compute_xx` PTX for the driver to finish.
    pub target: String,
    /// Whether the machine code came from the on-disk cache.
    pub from_cache: bool,
}

static GPUS: LazyLock<Mutex<HashMap<usize, Arc<Gpu>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

fn arch_for(cc: (i32, i32)) -> Option<&'static str> {
    Some(match cc {
        (7, 0) => "compute_70",
        (7, 5) => "compute_75",
        (8, 0) => "compute_80",
        (8, 6) => "compute_86",
        (8, 9) => "compute_89",
        (9, 0) => "compute_90",
        (10, 0) => "compute_100",
        (12, 0) => "compute_120",
        _ => return None,
    })
}

/// Compiles the kernel source to PTX (no GPU needed; NVRTC must be loadable).
pub fn compile(arch: Option<&'static str>) -> Result<cudarc::nvrtc::Ptx> {
    let opts = CompileOptions {
        arch,
        fmad: Some(false),
        options: vec!["--std=c++17".into()],
        ..Default::default()
    };
    std::panic::catch_unwind(|| compile_ptx_with_opts(KERNELS, opts))
        .map_err(|_| {
            CudaError("NVRTC could not be loaded (is libnvrtc on LD_LIBRARY_PATH?)".into())
        })?
        .map_err(|e| CudaError::at("compiling the Birdbone kernels with NVRTC", e))
}

/// Machine code for the device's architecture, from the on-disk cache when an earlier process
/// built it (NVRTC and the driver's PTX JIT together take tens of seconds for these kernels,
/// which a serving warm-up should not pay twice), else compiled and cached; PTX for
/// architectures without a known `sm_` name.
fn load_kernels(ctx: &Arc<CudaContext>, cc: (i32, i32)) -> Result<(Arc<CudaModule>, String, bool)> {
    let Some(arch) = arch_for(cc) else {
        let module = ctx
            .load_module(compile(None)?)
            .map_err(|e| CudaError::at("loading the kernels", e))?;
        return Ok((module, "ptx".into(), false));
    };
    let sm = arch.replace("compute_", "sm_");
    let cached = cache_path(&sm);
    if let Some(bytes) = cached.as_ref().and_then(|p| std::fs::read(p).ok()) {
        if let Ok(module) = ctx.load_module(cudarc::nvrtc::Ptx::from_binary(bytes)) {
            return Ok((module, sm, true));
        }
    }
    let cubin = compile_cubin(&sm)?;
    if let Some(path) = &cached {
        // Best effort: a read-only home only costs the next process a compile.
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        if path
            .parent()
            .is_some_and(|d| std::fs::create_dir_all(d).is_ok())
            && std::fs::write(&tmp, &cubin).is_ok()
        {
            let _ = std::fs::rename(&tmp, path);
        }
    }
    let module = ctx
        .load_module(cudarc::nvrtc::Ptx::from_binary(cubin))
        .map_err(|e| CudaError::at("loading the kernels", e))?;
    Ok((module, sm, false))
}

/// `$BIRDBONE_KERNEL_CACHE`, else `$XDG_CACHE_HOME/birdbone`, else `~/.cache/birdbone`; the
/// file name carries a hash of the source and options, so a changed kernel never loads stale.
fn cache_path(sm: &str) -> Option<std::path::PathBuf> {
    let dir = std::env::var_os("BIRDBONE_KERNEL_CACHE")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("XDG_CACHE_HOME").map(|d| std::path::PathBuf::from(d).join("birdbone"))
        })
        .or_else(|| {
            std::env::var_os("HOME").map(|d| std::path::PathBuf::from(d).join(".cache/birdbone"))
        })?;
    // FNV-1a: stable across Rust versions, unlike std's hasher.
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in KERNELS
        .bytes()
        .chain(sm.bytes())
        .chain(CUBIN_OPTIONS.concat().bytes())
    {
        h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
    }
    Some(dir.join(format!("kernels-{h:016x}-{sm}.cubin")))
}

const CUBIN_OPTIONS: [&str; 2] = ["--std=c++17", "--fmad=false"];

/// Compiles the kernels for `sm` (e.g. `sm_90`) into the on-disk cache without a GPU, so a
/// machine that receives the cache folder (`BIRDBONE_KERNEL_CACHE`) loads them at once. Returns
/// the file written (or already there).
pub fn precompile(sm: &str) -> Result<std::path::PathBuf> {
    let path = cache_path(sm)
        .ok_or_else(|| CudaError("no cache folder: set BIRDBONE_KERNEL_CACHE".into()))?;
    // The name holds a hash of the source and options: a file already there is this build.
    if path.exists() {
        return Ok(path);
    }
    let cubin = compile_cubin(sm)?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| CudaError::at("creating the kernel cache folder", e))?;
    }
    std::fs::write(&path, cubin).map_err(|e| CudaError::at("writing the kernel cache", e))?;
    Ok(path)
}

/// Compiles the kernel source to machine code for `sm` (e.g. `sm_90`).
fn compile_cubin(sm: &str) -> Result<Vec<u8>> {
    use cudarc::nvrtc::{result, sys};
    let src = std::ffi::CString::new(KERNELS).expect("the kernel source has no NUL");
    let arch = format!("--gpu-architecture={sm}");
    let opts = [arch.as_str(), CUBIN_OPTIONS[0], CUBIN_OPTIONS[1]];
    let build = || -> Result<Vec<u8>> {
        let prog = result::create_program(&src, None)
            .map_err(|e| CudaError::at("creating the NVRTC program", e))?;
        // SAFETY: `prog` lives until it is destroyed at the end; NVRTC sizes the buffers.
        unsafe {
            let out = match result::compile_program(prog, &opts) {
                Err(e) => {
                    let log = result::get_program_log(prog)
                        .map(|l| {
                            std::ffi::CStr::from_ptr(l.as_ptr())
                                .to_string_lossy()
                                .into_owned()
                        })
                        .unwrap_or_default();
                    Err(CudaError(format!(
                        "compiling the Birdbone kernels for {sm}: {e}\n{log}"
                    )))
                }
                Ok(()) => {
                    let mut n = 0usize;
                    sys::nvrtcGetCUBINSize(prog, &mut n)
                        .result()
                        .map_err(|e| CudaError::at("reading the CUBIN size", e))?;
                    let mut buf = vec![0u8; n];
                    sys::nvrtcGetCUBIN(prog, buf.as_mut_ptr().cast())
                        .result()
                        .map_err(|e| CudaError::at("reading the CUBIN", e))?;
                    Ok(buf)
                }
            };
            let _ = result::destroy_program(prog);
            out
        }
    };
    std::panic::catch_unwind(build).map_err(|_| {
        CudaError("NVRTC could not be loaded (is libnvrtc on LD_LIBRARY_PATH?)".into())
    })?
}

/// The kernels of CUDA device `ordinal`, compiled on first use.
pub fn gpu(ordinal: usize) -> Result<Arc<Gpu>> {
    let mut map = GPUS.lock();
    if let Some(g) = map.get(&ordinal) {
        return Ok(g.clone());
    }
    let ctx = std::panic::catch_unwind(|| CudaContext::new(ordinal))
        .map_err(|_| CudaError("the CUDA driver could not be loaded".into()))?
        .map_err(|e| CudaError::at("opening the CUDA device", e))?;
    let cc = ctx
        .compute_capability()
        .map_err(|e| CudaError::at("reading the compute capability", e))?;
    let sms = ctx
        .attribute(
            cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
        )
        .map_err(|e| CudaError::at("reading the SM count", e))? as u32;
    let started = std::time::Instant::now();
    let (module, target, from_cache) = load_kernels(&ctx, cc)?;
    let g = Arc::new(Gpu {
        ctx,
        module,
        sms,
        functions: Mutex::new(HashMap::new()),
        build: KernelBuild {
            seconds: started.elapsed().as_secs_f64(),
            target,
            from_cache,
        },
    });
    map.insert(ordinal, g.clone());
    Ok(g)
}

fn cfg(grid: u64, block: u32, smem: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (grid.clamp(1, u32::MAX as u64) as u32, 1, 1),
        block_dim: (block, 1, 1),
        shared_mem_bytes: smem,
    }
}

/// A point in a stream's work, for developer timelines (`Gpu::mark`).
pub struct Mark(cudarc::driver::CudaEvent);

impl Mark {
    /// Milliseconds of device time from this mark to `later` (waits for `later`).
    pub fn ms_until(&self, later: &Mark) -> Result<f32> {
        self.0
            .elapsed_ms(&later.0)
            .map_err(|e| CudaError::at("timing events", e))
    }
}

impl Gpu {
    /// A timing event recorded now on the stream libtorch uses (developer traces); no wait.
    pub fn mark(&self) -> Result<Mark> {
        self.stream()
            .record_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT))
            .map(Mark)
            .map_err(|e| CudaError::at("recording an event", e))
    }

    /// Streaming multiprocessors on the device.
    pub fn sms(&self) -> u32 {
        self.sms
    }

    /// How the kernels were built for this device.
    pub fn kernel_build(&self) -> &KernelBuild {
        &self.build
    }

    /// The device's name (`NVIDIA H100 80GB HBM3`, ...).
    pub fn name(&self) -> String {
        self.ctx
            .name()
            .unwrap_or_else(|_| "unknown CUDA device".into())
    }

    /// Free and total device memory, in bytes, from the driver (callable from any thread).
    pub fn mem_info(&self) -> Result<(usize, usize)> {
        self.ctx
            .bind_to_thread()
            .map_err(|e| CudaError::at("binding the context", e))?;
        self.ctx
            .mem_get_info()
            .map_err(|e| CudaError::at("reading memory use", e))
    }

    fn function(&self, name: &str) -> Result<Arc<CudaFunction>> {
        let mut f = self.functions.lock();
        if let Some(x) = f.get(name) {
            return Ok(x.clone());
        }
        let func = Arc::new(
            self.module
                .load_function(name)
                .map_err(|e| CudaError::at(name, e))?,
        );
        let smem = if name.starts_with("hist_high")
            || name.starts_with("sample_hist_") && name.ends_with("_mag")
        {
            32768 * 4
        } else if name.starts_with("row_select_warp") {
            ROW_SMEM as i32
        } else if name.starts_with("row_prune_reg") {
            row_reg_smem(ROW_REG_MAX_THREADS * ROW_REG_V, true) as i32
        } else {
            0
        };
        if smem > 0 {
            func.set_attribute(
                CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                smem,
            )
            .map_err(|e| CudaError::at("allowing dynamic shared memory", e))?;
        }
        if tracing::enabled!(tracing::Level::DEBUG) {
            let (block, smem) = if name.starts_with("hist_high") {
                (1024, 32768 * 4)
            } else if name.starts_with("row_select_warp") {
                (256, ROW_SMEM as usize)
            } else if name.starts_with("band_pass") {
                (512, 0)
            } else {
                (256, 0)
            };
            tracing::debug!(
                "{name}: {} registers, {} B local, {} blocks of {block} per SM",
                func.num_regs().unwrap_or(-1),
                func.local_size_bytes().unwrap_or(-1),
                func.occupancy_max_active_blocks_per_multiprocessor(block, smem, None)
                    .unwrap_or(0)
            );
        }
        f.insert(name.to_string(), func.clone());
        Ok(func)
    }

    /// Copies `src` to device memory at `dst` (at least `src.len()` u64 words) on the stream
    /// libtorch uses now, without waiting for the device: libtorch's own host-to-device copy
    /// synchronises the stream, which would cost a wait for every small table between launches.
    /// The driver stages pageable memory before returning, so `src` may be dropped after.
    pub fn upload_words(&self, dst: u64, src: &[i64]) -> Result<()> {
        self.ctx
            .bind_to_thread()
            .map_err(|e| CudaError::at("upload", e))?;
        let s = self.stream();
        // SAFETY: the caller passes a live allocation of at least `src.len()` words; the copy is
        // ordered on the stream the kernels reading it use.
        unsafe { cudarc::driver::result::memcpy_htod_async(dst, src, s.cu_stream()) }
            .map_err(|e| CudaError::at("upload", e))
    }

    /// `dst.len()` bytes from device address `src`, once the stream's work before it is done.
    pub fn download(&self, src: u64, dst: &mut [u8]) -> Result<()> {
        self.ctx
            .bind_to_thread()
            .map_err(|e| CudaError::at("download", e))?;
        let s = self.stream();
        // SAFETY: the caller passes a live allocation of at least `dst.len()` bytes; the copy is
        // ordered after the kernels that write it, and the stream is waited for before return.
        unsafe { cudarc::driver::result::memcpy_dtoh_async(dst, src, s.cu_stream()) }
            .map_err(|e| CudaError::at("download", e))?;
        s.synchronize().map_err(|e| CudaError::at("download", e))
    }

    /// The stream libtorch uses for this device now.
    pub fn stream(&self) -> Arc<CudaStream> {
        match torch_current_stream(self.ctx.ordinal() as i8) {
            // SAFETY: libtorch owns the stream and keeps it alive; it belongs to the primary
            // context of this device, which `ctx` retains; ordering is libtorch's own.
            Some(s) if !s.is_null() => unsafe { self.ctx.wrap_borrowed_stream(s as _) },
            _ => self.ctx.default_stream(),
        }
    }

    /// Pass 1: histograms of the high key halves. `segs` holds 6 u64 per segment
    /// `{ptr, scale, n, cols, slot, aligned}`, `chunks` 3 u64 per chunk `{segment, first vector,
    /// vectors}`; `hists` 65536 u32 per slot; `bad_flag` u32, `bad_index` one u64 per slot
    /// (init !0): the first non-finite element's index.
    #[allow(clippy::too_many_arguments)]
    pub fn hist_high(
        &self,
        dt: Dt,
        kind: ScoreKind,
        segs: u64,
        chunks: u64,
        nchunks: u32,
        hists: u64,
        bad_flag: u64,
        bad_index: u64,
    ) -> Result<()> {
        let f = self.function(&format!("hist_high_{}_{}", dt.name(), kind.name()))?;
        let s = self.stream();
        let mut b = s.launch_builder(&f);
        b.arg(&segs)
            .arg(&chunks)
            .arg(&nchunks)
            .arg(&hists)
            .arg(&bad_flag)
            .arg(&bad_index);
        // SAFETY: the arguments match the kernel's signature; the caller guarantees the pointers.
        unsafe { b.launch(cfg((nchunks as u64).min(self.sms as u64), 1024, 32768 * 4)) }
            .map_err(|e| CudaError::at("hist_high", e))?;
        Ok(())
    }

    /// Pass 2: histograms of the low key halves of keys whose high half is their slot's entry
    /// of `his` (u32 per slot).
    #[allow(clippy::too_many_arguments)]
    pub fn hist_low(
        &self,
        dt: Dt,
        kind: ScoreKind,
        segs: u64,
        chunks: u64,
        nchunks: u32,
        his: u64,
        hists: u64,
    ) -> Result<()> {
        let f = self.function(&format!("hist_low_{}_{}", dt.name(), kind.name()))?;
        let s = self.stream();
        let mut b = s.launch_builder(&f);
        b.arg(&segs)
            .arg(&chunks)
            .arg(&nchunks)
            .arg(&his)
            .arg(&hists);
        // SAFETY: as above.
        unsafe { b.launch(cfg((nchunks as u64).min(self.sms as u64 * 4), 1024, 0)) }
            .map_err(|e| CudaError::at("hist_low", e))?;
        Ok(())
    }

    /// Totals over `slots` histograms into `total` (65536 u64).
    pub fn sum_slots(&self, hists: u64, slots: u32, total: u64) -> Result<()> {
        let f = self.function("sum_slots")?;
        let s = self.stream();
        let mut b = s.launch_builder(&f);
        b.arg(&hists).arg(&slots).arg(&total);
        // SAFETY: as above.
        unsafe { b.launch(cfg(256, 256, 0)) }.map_err(|e| CudaError::at("sum_slots", e))?;
        Ok(())
    }

    /// Per slot: the count in `bin` (into `at`) and below it (into `below`), u64 each.
    pub fn slot_counts(&self, hists: u64, slots: u32, bin: u32, at: u64, below: u64) -> Result<()> {
        let f = self.function("slot_counts")?;
        let s = self.stream();
        let mut b = s.launch_builder(&f);
        b.arg(&hists).arg(&slots).arg(&bin).arg(&at).arg(&below);
        // SAFETY: as above.
        unsafe { b.launch(cfg(slots as u64, 256, 0)) }
            .map_err(|e| CudaError::at("slot_counts", e))?;
        Ok(())
    }

    /// Per slot: the bin of its `ks[slot]`-th smallest key (u32; !0 when k is 0), the count
    /// before that bin and in it (u64 each).
    #[allow(clippy::too_many_arguments)]
    pub fn find_slot_bins(
        &self,
        hists: u64,
        slots: u32,
        ks: u64,
        bins: u64,
        before: u64,
        at: u64,
    ) -> Result<()> {
        let f = self.function("find_slot_bins")?;
        let s = self.stream();
        let mut b = s.launch_builder(&f);
        b.arg(&hists)
            .arg(&slots)
            .arg(&ks)
            .arg(&bins)
            .arg(&before)
            .arg(&at);
        // SAFETY: as above.
        unsafe { b.launch(cfg(slots as u64, 256, 0)) }
            .map_err(|e| CudaError::at("find_slot_bins", e))?;
        Ok(())
    }

    /// Tiles an apply launch needs for `n` elements of `dt`.
    pub fn apply_tiles(&self, dt: Dt, n: u64) -> u64 {
        n.div_ceil(dt.per_vector())
            .div_ceil(APPLY_THREADS as u64 * TILE_U)
    }

    fn launch(&self, name: &str, grid: u64, block: u32, args: &[&dyn ArgValue]) -> Result<()> {
        self.launch_smem(name, grid, block, 0, args)
    }

    fn launch_smem(
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
        segs: u64,
        nsegs: i32,
        tiles: u64,
        status: u64,
        ticket: u64,
        pruned: u64,
    ) -> Result<()> {
        let name = format!("apply_threshold_{}_{}", dt.name(), kind.name());
        // Persistent blocks: a few per SM, each taking tiles from the ticket until none is left.
        self.launch(
            &name,
            tiles.min(self.sms as u64 * 8),
            APPLY_THREADS,
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
        segs: u64,
        nsegs: i32,
        rows: u64,
        max_cols: u64,
        whole_vectors: bool,
        bad_flag: u64,
        bad_index: u64,
    ) -> Result<()> {
        let nvec = max_cols.div_ceil(dt.per_vector());
        if whole_vectors && nvec <= ROW_REG_MAX_THREADS * ROW_REG_V {
            let name = format!("row_select_reg_{}_{}", dt.name(), kind.name());
            let (grid, threads, smem) = self.row_reg_shape(&name, dt, rows, max_cols, false)?;
            self.launch_smem(
                &name,
                grid,
                threads,
                smem,
                &[&segs, &nsegs, &rows, &bad_flag, &bad_index],
            )
        } else {
            let name = format!("row_select_warp_{}_{}", dt.name(), kind.name());
            let grid = rows.div_ceil(8).min(self.sms as u64 * 3);
            self.launch_smem(
                &name,
                grid,
                256,
                ROW_SMEM,
                &[&segs, &nsegs, &rows, &bad_flag, &bad_index],
            )
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
        segs: u64,
        nsegs: i32,
        rows: u64,
        max_cols: u64,
        same_length: bool,
        pruned: u64,
        band_stats: u64,
    ) -> Result<()> {
        let full = same_length && Self::row_fills_warps(dt, max_cols);
        let name = format!(
            "row_prune_reg_{}{}_{}",
            if full { "full_" } else { "" },
            dt.name(),
            kind.name()
        );
        let (grid, threads, smem) = self.row_reg_shape(&name, dt, rows, max_cols, true)?;
        self.launch_smem(
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
        segs: u64,
        chunks: u64,
        nchunks: u32,
        pruned: u64,
    ) -> Result<()> {
        let name = format!("row_apply_stream_{}_{}", dt.name(), kind.name());
        self.launch(
            &name,
            (nchunks as u64).min(self.sms as u64 * 4),
            256,
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
        segs: u64,
        chunks: u64,
        nchunks: u32,
        hists: u64,
    ) -> Result<()> {
        let name = format!("sample_hist_{}_{}", dt.name(), kind.name());
        // Magnitudes count in a 32768-bin shared histogram per block (see the kernel).
        let (block, smem) = if kind == ScoreKind::Magnitude {
            (1024, 32768 * 4)
        } else {
            (256, 0)
        };
        self.launch_smem(
            &name,
            (nchunks as u64).min(self.sms as u64 * 8),
            block,
            smem,
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
        segs: u64,
        chunks: u64,
        nchunks: u32,
        lo: u64,
        width: u64,
        band: u64,
        below: u64,
        bad_flag: u64,
        bad_index: u64,
        band_chunks: u64,
        chunk_stride: u32,
    ) -> Result<()> {
        let name = format!("band_pass_{}_{}", dt.name(), kind.name());
        self.launch(
            &name,
            (nchunks as u64).min(self.sms as u64 * 4),
            512,
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
        segs: u64,
        chunks: u64,
        items: u64,
        nitems: u32,
        band_chunks: u64,
        chunk_stride: u32,
        lo: u64,
        out: u64,
        parts: u64,
        done: u64,
    ) -> Result<()> {
        let name = format!("tie_locate_{}_{}", dt.name(), kind.name());
        self.launch(
            &name,
            nitems as u64 * TIE_PARTS,
            512,
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
    /// words) and `units` (nseg words) on the device: a 7B model's table of 13 K chunks took the
    /// host 0.1 to 0.2 ms to build and copy, per pass.
    pub fn expand_chunks(
        &self,
        starts: u64,
        units: u64,
        nseg: u32,
        chunk: u64,
        nchunks: u64,
        out: u64,
    ) -> Result<()> {
        self.launch(
            "expand_chunks",
            nchunks.div_ceil(256).clamp(1, self.sms as u64 * 8),
            256,
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
        sample: u64,
        ranks: u64,
        floor_key: u32,
        band_max: u32,
        lo: u64,
        width: u64,
        bad_index: u64,
        nseg: u32,
    ) -> Result<()> {
        self.launch(
            "band_choose",
            nscopes as u64,
            1024,
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
        band: u64,
        below: u64,
        first_seg: u64,
        width: u64,
        ks: u64,
        chunk_starts: u64,
        chunk_stride: u32,
        out_bin: u64,
        seg_below: u64,
        seg_ties: u64,
        items: u64,
    ) -> Result<()> {
        self.launch(
            "band_resolve",
            nscopes as u64,
            256,
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
        segs: u64,
        chunks: u64,
        nchunks: u32,
        pruned: u64,
    ) -> Result<()> {
        let name = format!("apply_stream_{}_{}", dt.name(), kind.name());
        self.launch(
            &name,
            (nchunks as u64).min(self.sms as u64 * 4),
            256,
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
        segs: u64,
        chunks: u64,
        nchunks: u32,
        pruned: u64,
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
            256,
            &[&segs, &chunks, &nchunks, &pruned],
        )
    }

    /// `out = sqrtf(in)` (correctly rounded, as libtorch's) for `count` f32 arrays; `table`
    /// holds `{in, out, n}` u64 words per array. A block per array.
    pub fn sqrt_many(&self, table: u64, count: u32) -> Result<()> {
        self.launch("sqrt_many_f32", count as u64, 256, &[&table, &count])
    }

    /// The smallest flat index of a non-finite element per slot into `first` (u64 per slot,
    /// set to !0 before), over chunks of vectors. `scaled`: of the scaled magnitudes
    /// `|w| * scale[col]` instead (an overflow counts); segments then hold rows of whole 16-byte
    /// vectors, aligned.
    pub fn find_non_finite(
        &self,
        dt: Dt,
        scaled: bool,
        segs: u64,
        chunks: u64,
        nchunks: u32,
        first: u64,
    ) -> Result<()> {
        let what = if scaled { "_scaled" } else { "" };
        let name = format!("find_non_finite{what}_{}", dt.name());
        self.launch(
            &name,
            (nchunks as u64).min(self.sms as u64 * 8),
            256,
            &[&segs, &chunks, &nchunks, &first],
        )
    }

    /// Zeroes the elements whose mask bit is 0 (mask pointer per segment); counts per slot.
    pub fn apply_mask(
        &self,
        dt: Dt,
        segs: u64,
        chunks: u64,
        nchunks: u32,
        pruned: u64,
    ) -> Result<()> {
        let name = format!("apply_mask_{}", dt.name());
        self.launch(
            &name,
            (nchunks as u64).min(self.sms as u64 * 8),
            256,
            &[&segs, &chunks, &nchunks, &pruned],
        )
    }
}

/// A kernel argument pushed into a launch (the values are copied by the driver at launch).
trait ArgValue {
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

#[cfg(test)]
mod tests {
    #[test]
    fn the_kernels_compile_with_nvrtc() {
        // NVRTC ships in the torch wheel's nvidia packages (scripts/env.sh puts it on the library
        // path), so this runs on machines without a GPU too.
        match super::compile(Some("compute_90")) {
            Ok(ptx) => assert!(ptx.to_src().contains(".entry hist_high_bf16_mag")),
            Err(e) if e.0.contains("could not be loaded") => eprintln!("skipped: {e}"),
            Err(e) => panic!("{e}"),
        }
    }
}
#[cfg(test)]
mod dev {
    use std::ffi::{CStr, CString};

    use cudarc::nvrtc::result;

    /// Developer check, no GPU needed: `cargo test -p birdbone-cuda -- --ignored ptxas_report`
    /// prints ptxas's register and spill report for every kernel on sm_90 (a kernel over 64
    /// registers cannot launch with 1024 threads).
    #[test]
    #[ignore]
    fn ptxas_report() {
        let src = CString::new(super::KERNELS).unwrap();
        let prog = result::create_program(&src, None).unwrap();
        let opts = [
            "--gpu-architecture=sm_90",
            "--std=c++17",
            "--fmad=false",
            "--ptxas-options=-v",
        ];
        // SAFETY: the program and options are valid for the duration of the calls.
        unsafe {
            let r = result::compile_program(prog, &opts);
            let log = result::get_program_log(prog).unwrap();
            let log = CStr::from_ptr(log.as_ptr()).to_string_lossy();
            std::fs::write("/tmp/ptxas.log", log.as_bytes()).unwrap();
            r.unwrap();
        }
    }
}

#[cfg(test)]
mod cubin_tests {
    #[test]
    fn the_kernels_compile_to_sm90_machine_code() {
        match super::compile_cubin("sm_90") {
            // An ELF image.
            Ok(cubin) => assert_eq!(&cubin[..4], b"\x7fELF"),
            Err(e) if e.0.contains("could not be loaded") => eprintln!("skipped: {e}"),
            Err(e) => panic!("{e}"),
        }
    }
}

#[cfg(test)]
mod chunk_tests {
    #[test]
    fn chunk_starts_count_each_segments_chunks() {
        // Chunks of 2 units: none for an empty segment, a short last chunk for odd ones.
        assert_eq!(super::chunk_starts(&[0, 5, 4, 1], 2), vec![0, 0, 3, 5, 6]);
    }
}
