//! `birdbone._birdbone`: the native half of the `birdbone` Python package.
//!
//! Tensors arrive as the `torch.Tensor` objects of the live model and become `tch::Tensor`s
//! through pyo3-tch: the same `at::Tensor` (same storage, same `data_ptr()`), no copy. The
//! package's Python half imports torch before this module, so libtorch (and libtorch_python)
//! are already in the process and the loader reuses them: one libtorch, the one torch uses.
//!
//! Every pass runs with the GIL released. Errors become `birdbone.BirdboneError`. A sequential
//! pass is a [`Sequential`] object (owning a `birdbone_tch::SequentialPass`) that the Python
//! half feeds one block's statistics at a time; a completed pass can be kept as an [`Undo`].

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use birdbone_host::{
    recipe::{CalibrationMode, Recipe},
    trust::{ProbeChoice, TrustPolicy, PROBE_NAME},
    Allocation, PassConfig,
};
use birdbone_tch::{
    selected, train::Compression, ActivationStats, PassInputs, PluginRegistry, Pruner,
    SequentialPass, UndoHistory, UndoPolicy,
};
use pyo3::{create_exception, exceptions::PyRuntimeError, prelude::*, types::PyDict};
use pyo3_tch::PyTensor;
use tch::Tensor;

create_exception!(
    birdbone,
    BirdboneError,
    PyRuntimeError,
    "A Birdbone pass, recipe, plugin or calibration failed; the model is as it was."
);

fn err(e: impl std::fmt::Display) -> PyErr {
    BirdboneError::new_err(e.to_string())
}

/// The workspace's release folder, where `cargo build --release` puts the built-in plugins.
const DEFAULT_PLUGIN_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/release");

/// Registries by plugin folders. Loading a plugin maps a private copy of it into the process
/// for good (libraries are never unloaded), so each set of folders is loaded once.
type Registries = Mutex<HashMap<Vec<PathBuf>, Arc<PluginRegistry>>>;
static REGISTRIES: std::sync::OnceLock<Registries> = std::sync::OnceLock::new();

fn dirs_or_default(dirs: Option<Vec<PathBuf>>) -> Vec<PathBuf> {
    match dirs {
        Some(d) if !d.is_empty() => d,
        _ => vec![PathBuf::from(DEFAULT_PLUGIN_DIR)],
    }
}

/// The trust policy of the environment; the plugin probe, which `birdbone` looks for beside
/// its own executable (here: python), is looked for in the plugin folders too.
fn policy(dirs: &[PathBuf]) -> TrustPolicy {
    let mut p = TrustPolicy::from_env();
    if p.probe == ProbeChoice::Auto && p.probe.find().is_none() {
        if let Some(probe) = dirs
            .iter()
            .map(|d| d.join(PROBE_NAME))
            .find(|f| f.is_file())
        {
            p.probe = ProbeChoice::Binary(probe);
        }
    }
    p
}

fn registry(dirs: &[PathBuf]) -> Arc<PluginRegistry> {
    let cache = REGISTRIES.get_or_init(Default::default);
    let mut map = cache.lock().unwrap_or_else(|e| e.into_inner());
    map.entry(dirs.to_vec())
        .or_insert_with(|| Arc::new(PluginRegistry::discover_with(dirs, policy(dirs))))
        .clone()
}

/// A recipe from a file (`is_path`: Birdbone's YAML/JSON or llm-compressor's) or from text.
fn load_recipe(source: &str, is_path: bool) -> PyResult<Recipe> {
    if is_path {
        Recipe::from_file(Path::new(source)).map_err(err)
    } else {
        Recipe::from_text(source, false, Path::new("<recipe>")).map_err(err)
    }
}

fn to_params(params: Vec<(String, PyTensor)>) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = params.into_iter().map(|(n, t)| (n, t.0)).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Statistics as the Python half records them: per weight name `(Σ x², tokens)`.
type Sums = BTreeMap<String, (PyTensor, u64)>;
/// Per weight name `(XᵀX, tokens, group)`: one matrix per group of Linears that read one input.
type Hessians = BTreeMap<String, (PyTensor, u64, u64)>;

fn to_stats(stats: Option<Sums>, hessians: Option<Hessians>) -> Option<ActivationStats> {
    if stats.is_none() && hessians.is_none() {
        return None;
    }
    let sums = stats
        .unwrap_or_default()
        .into_iter()
        .map(|(n, (t, k))| (n, (t.0, k)))
        .collect();
    let hessians = hessians
        .unwrap_or_default()
        .into_iter()
        .map(|(n, (t, k, g))| (n, (t.0, k, g)))
        .collect();
    Some(ActivationStats::from_parts(sums, hessians))
}

fn pruner_for(recipe: &Recipe, reg: &PluginRegistry) -> PyResult<Pruner> {
    let pruner = Pruner::from_recipe(reg, recipe).map_err(err)?;
    if let (Some(a), true) = (&recipe.allocator, pruner.allocator_needs_load()) {
        return Err(err(format!(
            "allocator '{}' measures the load on each layer by running the model, which the Python front does not do yet: use `birdbone prune`, or allocator uniform/owl",
            a.name
        )));
    }
    Ok(pruner)
}

fn masks_dict(py: Python<'_>, masks: &birdbone_tch::MaskSet) -> PyResult<Py<PyDict>> {
    let d = PyDict::new(py);
    for (name, m) in masks.iter() {
        d.set_item(name, PyTensor(m.keep().map_err(err)?))?;
    }
    Ok(d.unbind())
}

/// A recipe made ready for a pass in place: its components created, its pass checked.
struct Setup {
    recipe: Recipe,
    pruner: Pruner,
    cfg: PassConfig,
    /// Calibrated block by block: the recipe says so, or it has no calibration and the strategy
    /// needs Hessians (`birdbone prune`'s default, the SparseGPT paper's procedure).
    sequential: bool,
}

fn setup(recipe: &str, is_path: bool, plugin_dirs: Option<Vec<PathBuf>>) -> PyResult<Setup> {
    let recipe = load_recipe(recipe, is_path)?;
    let reg = registry(&dirs_or_default(plugin_dirs));
    let pruner = pruner_for(&recipe, &reg)?;
    let sequential = match &recipe.calibration {
        Some(c) => c.mode == CalibrationMode::Sequential,
        None => pruner.needs_hessians(),
    };
    if sequential && recipe.strategy.name == "global" {
        return Err(err("sequential calibration prunes one block per pass, so the 'global' strategy would rank within a block: use one-pass calibration, or a per-parameter strategy (layerwise, nm)"));
    }
    let mut cfg = recipe.pass_config();
    cfg.target().map_err(err)?;
    if let Some(path) = &recipe.allocation {
        let a = Allocation::load(path).map_err(err)?;
        if (a.sparsity - cfg.sparsity).abs() > 1e-12 {
            return Err(err(format!(
                "{} allocates sparsity {}, but the recipe asks for {}",
                path.display(),
                a.sparsity,
                cfg.sparsity
            )));
        }
        cfg.allocation = Some(Arc::new(a));
    }
    Ok(Setup {
        recipe,
        pruner,
        cfg,
        sequential,
    })
}

/// Keeps the pass for [`Undo`]: one pass, within any host memory.
fn keep_one_pass(pruner: &mut Pruner) -> PyResult<()> {
    pruner
        .set_undo(UndoPolicy {
            passes: 1,
            ..Default::default()
        })
        .map_err(err)
}

/// What the Python half must know before it calibrates, checked as a pass checks it (the
/// components created, refusals made before any forward runs): `sequential` (see [`Setup`]),
/// `explicit` (the recipe has a calibration section), `activations` (the scorer reads
/// activation statistics), `hessians` (the strategy reads `XᵀX`), `allocator` (one is set) and
/// `batch` (the recipe's calibration batch, or None).
#[pyfunction]
#[pyo3(signature = (recipe, is_path, plugin_dirs=None))]
fn recipe_needs(
    py: Python<'_>,
    recipe: &str,
    is_path: bool,
    plugin_dirs: Option<Vec<PathBuf>>,
) -> PyResult<Py<PyDict>> {
    let s = setup(recipe, is_path, plugin_dirs)?;
    let d = PyDict::new(py);
    d.set_item("sequential", s.sequential)?;
    d.set_item("explicit", s.recipe.calibration.is_some())?;
    d.set_item("activations", s.pruner.needs_activations())?;
    d.set_item("hessians", s.pruner.needs_hessians())?;
    d.set_item("allocator", s.recipe.allocator.is_some())?;
    d.set_item("batch", s.recipe.calibration.as_ref().map(|c| c.batch))?;
    Ok(d.unbind())
}

/// One pass over `params` (the live model's tensors, by name) as `recipe` says, with one-pass
/// statistics; returns the report (JSON), the masks (name -> bool tensor, true = kept) and,
/// with `keep_undo`, the [`Undo`] that takes the pass back. Plan, then commit in place; a
/// failure leaves every tensor as it was.
#[pyfunction]
#[pyo3(signature = (params, recipe, is_path, stats=None, hessians=None, plugin_dirs=None, keep_masks=true, keep_undo=false))]
#[allow(clippy::too_many_arguments)]
fn prune(
    py: Python<'_>,
    params: Vec<(String, PyTensor)>,
    recipe: &str,
    is_path: bool,
    stats: Option<Sums>,
    hessians: Option<Hessians>,
    plugin_dirs: Option<Vec<PathBuf>>,
    keep_masks: bool,
    keep_undo: bool,
) -> PyResult<(String, Py<PyDict>, Option<Undo>)> {
    let Setup {
        recipe,
        mut pruner,
        mut cfg,
        sequential,
    } = setup(recipe, is_path, plugin_dirs)?;
    // Without a calibration section the default (sequential for SparseGPT) is for a pass that
    // calibrates; given statistics, it is a one-pass pass.
    if sequential && recipe.calibration.is_some() {
        return Err(err("the recipe calibrates block by block (sequential): give birdbone.prune calibration= batches, which it runs block by block, rather than stats="));
    }
    if pruner.needs_activations() && stats.is_none() {
        return Err(err("the scorer needs activation statistics: pass stats= (birdbone.calibrate(model, batches) records them) or calibration="));
    }
    if pruner.needs_hessians() && hessians.is_none() {
        return Err(err(format!(
            "strategy '{}' needs the Hessians (XᵀX) of every Linear's inputs: pass calibration=, or stats=birdbone.calibrate(model, batches, hessians=True)",
            recipe.strategy.name
        )));
    }
    if keep_undo {
        keep_one_pass(&mut pruner)?;
    }
    cfg.keep_masks = keep_masks;
    let params = to_params(params);
    let stats = to_stats(stats, hessians);
    let has_allocator = recipe.allocator.is_some();
    let (report, masks, history) = py
        .allow_threads(move || -> birdbone_tch::Result<_> {
            let inputs = PassInputs {
                stats: stats.as_ref(),
                ..Default::default()
            };
            if has_allocator {
                cfg.allocation = Some(Arc::new(pruner.allocate(&params, &cfg, inputs)?));
            }
            let (report, masks) = pruner.run(&params, &cfg, inputs)?;
            Ok((report, masks, pruner.take_history()))
        })
        .map_err(err)?;
    let json = serde_json::to_string(&report).map_err(err)?;
    Ok((
        json,
        masks_dict(py, &masks)?,
        keep_undo.then(|| Undo::new(history)),
    ))
}

/// A completed pass kept to be taken back (`prune(..., keep_undo=True)`): what it overwrote,
/// in host memory.
#[pyclass(module = "birdbone._birdbone")]
struct Undo {
    history: Mutex<UndoHistory>,
}

impl Undo {
    fn new(history: UndoHistory) -> Undo {
        Undo {
            history: Mutex::new(history),
        }
    }
}

#[pymethods]
impl Undo {
    /// Takes the pass back: every weight it wrote restored bit for bit, into the same tensors.
    /// False when it was already taken back.
    fn undo(&self, py: Python<'_>) -> PyResult<bool> {
        let mut history =
            std::mem::take(&mut *self.history.lock().unwrap_or_else(|e| e.into_inner()));
        let (history, done) = py.allow_threads(move || {
            let done = history.undo();
            (history, done)
        });
        *self.history.lock().unwrap_or_else(|e| e.into_inner()) = history;
        done.map_err(err)
    }

    /// Host memory the kept pass holds, in bytes (0 once taken back).
    fn bytes(&self) -> u64 {
        self.history
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .bytes()
    }
}

/// A sequential pass in progress (`birdbone_tch::SequentialPass`, owning its pruner): the
/// Python half runs the blocks and hands each block's statistics to [`Sequential::block`].
/// One transaction: a failure in a block, or [`Sequential::abandon`] (an exception between
/// blocks), restores every block written.
#[pyclass(module = "birdbone._birdbone")]
struct Sequential {
    /// Taken out while a call runs with the GIL released; `None` once the pass is over.
    state: Mutex<Option<SeqState>>,
    keep_undo: bool,
}

struct SeqState {
    params: Vec<(String, Tensor)>,
    pass: SequentialPass<'static>,
}

const PASS_OVER: &str = "the sequential pass is over (finished, failed or abandoned)";

impl Sequential {
    fn take(&self) -> PyResult<SeqState> {
        let taken = self.state.lock().unwrap_or_else(|e| e.into_inner()).take();
        taken.ok_or_else(|| err(PASS_OVER))
    }
}

#[pymethods]
impl Sequential {
    /// A pass over `params` as `recipe` says. `block_names`: every Linear weight of the decoder
    /// blocks (a selected parameter outside them would never be pruned, so it is refused).
    /// `stats`: the dense model's one-pass statistics, for the recipe's allocator only.
    #[new]
    #[pyo3(signature = (params, recipe, is_path, block_names, stats=None, plugin_dirs=None, keep_masks=true, keep_undo=false))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        params: Vec<(String, PyTensor)>,
        recipe: &str,
        is_path: bool,
        block_names: Vec<String>,
        stats: Option<Sums>,
        plugin_dirs: Option<Vec<PathBuf>>,
        keep_masks: bool,
        keep_undo: bool,
    ) -> PyResult<Self> {
        let Setup {
            recipe,
            mut pruner,
            mut cfg,
            ..
        } = setup(recipe, is_path, plugin_dirs)?;
        cfg.keep_masks = keep_masks;
        let params = to_params(params);
        let in_blocks: std::collections::BTreeSet<&String> = block_names.iter().collect();
        if let Some((outside, _)) = selected(&params, &cfg.filter)
            .map_err(err)?
            .into_iter()
            .find(|(n, _)| !in_blocks.contains(n))
        {
            return Err(err(format!("sequential calibration prunes the decoder blocks one by one, but the recipe also selects '{outside}', outside them: exclude it or use one-pass calibration")));
        }
        if keep_undo {
            keep_one_pass(&mut pruner)?;
        }
        let stats = to_stats(stats, None);
        let (params, pass) = match &recipe.allocator {
            None => (params, pruner.into_sequential(&cfg)),
            Some(a) => {
                let Some(stats) = stats else {
                    return Err(err(format!("allocator '{}' decides the counts for the whole model before the first block: pass the dense model's one-pass statistics", a.name)));
                };
                // Decided once, on the dense model's statistics (as `birdbone prune` does).
                py.allow_threads(move || -> birdbone_tch::Result<_> {
                    let inputs = PassInputs {
                        stats: Some(&stats),
                        ..Default::default()
                    };
                    cfg.allocation = Some(Arc::new(pruner.allocate(&params, &cfg, inputs)?));
                    Ok((params, pruner.into_sequential(&cfg)))
                })
                .map_err(err)?
            }
        };
        Ok(Sequential {
            state: Mutex::new(Some(SeqState { params, pass })),
            keep_undo,
        })
    }

    /// Prunes one block: those of `names` the recipe selects, with the statistics recorded on
    /// the block's inputs. Returns the block's report (JSON), or None when it selects none. A
    /// failure restores every block of the pass and ends it.
    #[pyo3(signature = (names, stats, hessians=None))]
    fn block(
        &self,
        py: Python<'_>,
        names: Vec<String>,
        stats: Sums,
        hessians: Option<Hessians>,
    ) -> PyResult<Option<String>> {
        let mut state = self.take()?;
        let stats = to_stats(Some(stats), hessians).expect("statistics given");
        let (state, out) = py.allow_threads(move || {
            let out = state
                .pass
                .block(&state.params, &names, &stats)
                .map(|r| r.map(serde_json::to_string));
            (state, out)
        });
        // A failed block has restored every block: the pass is over and is dropped.
        let report = out.map_err(err)?;
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = Some(state);
        report.transpose().map_err(err)
    }

    /// Ends the pass: the merged report (JSON), the masks and, with `keep_undo`, the [`Undo`]
    /// of the whole pass.
    fn finish(&self, py: Python<'_>) -> PyResult<(String, Py<PyDict>, Option<Undo>)> {
        let state = self.take()?;
        let (report, masks, pruner) = py
            .allow_threads(move || state.pass.finish_owned())
            .map_err(err)?;
        let json = serde_json::to_string(&report).map_err(err)?;
        let undo = match (self.keep_undo, pruner) {
            (true, Some(mut p)) => Some(Undo::new(p.take_history())),
            _ => None,
        };
        Ok((json, masks_dict(py, &masks)?, undo))
    }

    /// Abandons the pass: every block written is restored, newest first. Nothing to do when
    /// the pass is already over.
    fn abandon(&self, py: Python<'_>) -> PyResult<()> {
        let taken = self.state.lock().unwrap_or_else(|e| e.into_inner()).take();
        match taken {
            None => Ok(()),
            Some(state) => py.allow_threads(move || state.pass.abandon()).map_err(err),
        }
    }
}

/// Components (one dict each) and rejections (`(path, reason)`).
type PluginListing = (Vec<Py<PyDict>>, Vec<(String, String)>);

/// The plugins of `plugin_dirs`: `(components, rejected)`; each component a dict (name, kind,
/// plugin, version, abi, description, params), each rejection `(path, reason)`.
#[pyfunction]
#[pyo3(signature = (plugin_dirs=None))]
fn plugins(py: Python<'_>, plugin_dirs: Option<Vec<PathBuf>>) -> PyResult<PluginListing> {
    let dirs = dirs_or_default(plugin_dirs);
    let reg = registry(&dirs);
    let mut out = Vec::new();
    for c in reg.components() {
        let d = PyDict::new(py);
        d.set_item("name", c.info.name.as_str())?;
        d.set_item("kind", birdbone_host::Role::of(c.info).name())?;
        d.set_item("plugin", c.plugin.manifest.name.as_str())?;
        d.set_item("version", c.plugin.manifest.version.as_str())?;
        d.set_item("abi", c.plugin.manifest.abi.to_string())?;
        d.set_item("description", c.info.description.as_str())?;
        d.set_item("path", c.plugin.path.display().to_string())?;
        let params: Vec<(String, String, String)> = c
            .info
            .params
            .iter()
            .map(|p| (p.name.to_string(), p.default.to_string(), p.doc.to_string()))
            .collect();
        d.set_item("params", params)?;
        out.push(d.unbind());
    }
    let rejected = reg
        .rejected()
        .iter()
        .map(|r| (r.path.display().to_string(), r.reason.clone()))
        .collect();
    Ok((out, rejected))
}

/// The calibration windows `birdbone prune` runs: the first `count` windows of `length` tokens
/// of `text` (a file, or c4.utf8 / wiki.utf8 / tiny.utf8), tokenized by the model folder's
/// tokenizer.json as the CLI does.
#[pyfunction]
fn token_windows(
    py: Python<'_>,
    model_dir: PathBuf,
    text: &str,
    length: usize,
    count: usize,
) -> PyResult<Vec<Vec<i64>>> {
    let text = birdbone_llama::read_text(text).map_err(err)?;
    py.allow_threads(move || {
        let tok = birdbone_model_folder::load_tokenizer(&model_dir.join("tokenizer.json"))
            .map_err(|e| e.to_string())?;
        birdbone_llama::token_windows(&tok, &text, length, count).map_err(|e| e.to_string())
    })
    .map_err(err)
}

/// The statistics `birdbone prune` computes, by the CLI's own Llama runtime on the model
/// folder (f32, on `device`): per weight name `(Σ x² per input column, tokens)`.
#[pyfunction]
#[pyo3(signature = (model_dir, windows, batch, device="cpu"))]
fn calibrate_folder(
    py: Python<'_>,
    model_dir: PathBuf,
    windows: Vec<Vec<i64>>,
    batch: usize,
    device: &str,
) -> PyResult<Py<PyDict>> {
    let device = match device {
        "cpu" => tch::Device::Cpu,
        d if d.starts_with("cuda") => tch::Device::Cuda(
            d.strip_prefix("cuda:")
                .map(|i| i.parse().unwrap_or(0))
                .unwrap_or(0),
        ),
        d => return Err(err(format!("device '{d}': cpu, cuda or cuda:N"))),
    };
    let dir = model_dir
        .to_str()
        .ok_or_else(|| err("a model folder whose name is UTF-8"))?
        .to_string();
    let sums = py
        .allow_threads(move || -> Result<_, String> {
            let m = birdbone_llama::Loaded::load(&dir, device, tch::Kind::Float)
                .map_err(|e| e.to_string())?;
            let (got, _) = birdbone_llama::calibrate(&m.model, &windows, batch, false, &mut |_| {})
                .map_err(|e| e.to_string())?;
            Ok(got.sums)
        })
        .map_err(err)?;
    let d = PyDict::new(py);
    for (name, (t, n)) in sums {
        d.set_item(name, (PyTensor(t), n))?;
    }
    Ok(d.unbind())
}

/// The training callback (`birdbone_tch::train::Compression`) over a live module's parameters.
/// The compression is `Send`, not `Sync` (plugin objects and tensors), so it sits behind a
/// mutex; it is taken out while a call runs with the GIL released.
#[pyclass(module = "birdbone._birdbone")]
struct Compressor {
    comp: Mutex<Option<Compression>>,
}

const IN_USE: &str = "the compressor is in use by another thread";

impl Compressor {
    /// Runs `f` on the compression with the GIL released.
    fn run<T: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut Compression) -> birdbone_tch::Result<T> + Send,
    ) -> PyResult<T> {
        let taken = self.comp.lock().unwrap_or_else(|e| e.into_inner()).take();
        let mut comp = taken.ok_or_else(|| err(IN_USE))?;
        let (comp, out) = py.allow_threads(move || {
            let out = f(&mut comp);
            (comp, out)
        });
        *self.comp.lock().unwrap_or_else(|e| e.into_inner()) = Some(comp);
        out.map_err(err)
    }

    /// Runs `f` on the compression, holding the GIL (quick calls).
    fn with<T>(&self, f: impl FnOnce(&mut Compression) -> PyResult<T>) -> PyResult<T> {
        let mut guard = self.comp.lock().unwrap_or_else(|e| e.into_inner());
        f(guard.as_mut().ok_or_else(|| err(IN_USE))?)
    }
}

#[pymethods]
impl Compressor {
    /// From a recipe with a `training` section.
    #[new]
    #[pyo3(signature = (recipe, is_path, plugin_dirs=None))]
    fn new(recipe: &str, is_path: bool, plugin_dirs: Option<Vec<PathBuf>>) -> PyResult<Self> {
        let recipe = load_recipe(recipe, is_path)?;
        let cfg = recipe.compression().map_err(err)?;
        let dirs = dirs_or_default(plugin_dirs);
        let reg = registry(&dirs);
        let pruner = pruner_for(&recipe, &reg)?;
        if recipe.allocator.is_some() {
            return Err(err(
                "an allocator in a training recipe is not supported from Python yet",
            ));
        }
        let mut comp = Compression::new(pruner, cfg).map_err(err)?;
        // A replayed allocation (a pruned model's allocation.json, from `birdbone prune
        // --allocator birdbone`, say): each matrix's final count, which the layer plates rise to.
        if let Some(path) = &recipe.allocation {
            let a = Allocation::load(path).map_err(err)?;
            if (a.sparsity - recipe.sparsity).abs() > 1e-12 {
                return Err(err(format!(
                    "{} allocates sparsity {}, but the recipe asks for {}",
                    path.display(),
                    a.sparsity,
                    recipe.sparsity
                )));
            }
            comp.set_allocation(a).map_err(err)?;
        }
        Ok(Compressor {
            comp: Mutex::new(Some(comp)),
        })
    }

    /// Whether the next forwards should record activation statistics.
    fn wants_activations(&self) -> PyResult<bool> {
        self.with(|c| Ok(c.wants_activations()))
    }

    /// Adds recorded statistics (name -> (Σ x², tokens)).
    fn observe_activations(
        &self,
        py: Python<'_>,
        stats: BTreeMap<String, (PyTensor, u64)>,
    ) -> PyResult<()> {
        let stats: BTreeMap<String, (Tensor, u64)> =
            stats.into_iter().map(|(n, (t, k))| (n, (t.0, k))).collect();
        self.run(py, move |c| c.observe_activations(stats.iter()))
    }

    /// After backward, before the optimizer step: pruned weights get no gradient.
    fn after_backward(&self, py: Python<'_>, params: Vec<(String, PyTensor)>) -> PyResult<()> {
        let params = to_params(params);
        self.run(py, move |c| c.after_backward(&params))
    }

    /// After the optimizer step: masks re-applied, a pass at schedule points. Returns the
    /// step's event as JSON.
    fn after_step(&self, py: Python<'_>, params: Vec<(String, PyTensor)>) -> PyResult<String> {
        let params = to_params(params);
        let ev = self.run(py, move |c| c.after_step(&params))?;
        serde_json::to_string(&ev).map_err(err)
    }

    /// Prunes now, outside the schedule; returns the report as JSON.
    #[pyo3(signature = (params, sparsity, stats=None))]
    fn prune_now(
        &self,
        py: Python<'_>,
        params: Vec<(String, PyTensor)>,
        sparsity: f64,
        stats: Option<Sums>,
    ) -> PyResult<String> {
        let params = to_params(params);
        let stats = to_stats(stats, None);
        let r = self.run(py, move |c| c.prune_now(&params, sparsity, stats.as_ref()))?;
        serde_json::to_string(&r).map_err(err)
    }

    /// The masks in force (name -> bool tensor, true = kept).
    fn masks(&self, py: Python<'_>) -> PyResult<Py<PyDict>> {
        self.with(|c| masks_dict(py, c.masks()))
    }

    /// Optimizer steps seen.
    fn step(&self) -> PyResult<u64> {
        self.with(|c| Ok(c.step()))
    }

    /// Keeps the last `passes` passes for `undo_last_pass`.
    fn keep_undo(&self, passes: usize) -> PyResult<()> {
        self.with(|c| {
            c.keep_undo(passes);
            Ok(())
        })
    }

    /// Takes the newest kept pass back; False when none is kept.
    fn undo_last_pass(&self, py: Python<'_>) -> PyResult<bool> {
        self.run(py, |c| c.undo_last_pass())
    }
}

#[pymodule]
fn _birdbone(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("BirdboneError", m.py().get_type::<BirdboneError>())?;
    m.add("DEFAULT_PLUGIN_DIR", DEFAULT_PLUGIN_DIR)?;
    m.add("TORCH_VERSION", "2.11")?;
    m.add_function(wrap_pyfunction!(prune, m)?)?;
    m.add_function(wrap_pyfunction!(recipe_needs, m)?)?;
    m.add_class::<Sequential>()?;
    m.add_class::<Undo>()?;
    m.add_function(wrap_pyfunction!(plugins, m)?)?;
    m.add_function(wrap_pyfunction!(token_windows, m)?)?;
    m.add_function(wrap_pyfunction!(calibrate_folder, m)?)?;
    m.add_class::<Compressor>()?;
    Ok(())
}
