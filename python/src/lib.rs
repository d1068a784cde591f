//! `birdbone._birdbone`: the native half of the `birdbone` Python package.
//!
//! Tensors arrive as the `torch.Tensor` objects of the live model and become `tch::Tensor`s
//! through pyo3-tch: the same `at::Tensor` (same storage, same `data_ptr()`), no copy. The
//! package's Python half imports torch before this module, so libtorch (and libtorch_python)
//! are already in the process and the loader reuses them: one libtorch, the one torch uses.
//!
//! Every pass runs with the GIL released. Errors become `birdbone.BirdboneError`.

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
use birdbone_tch::{train::Compression, ActivationStats, PassInputs, PluginRegistry, Pruner};
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

fn to_stats(stats: Option<BTreeMap<String, (PyTensor, u64)>>) -> Option<ActivationStats> {
    stats.map(|s| {
        ActivationStats::from(
            s.into_iter()
                .map(|(n, (t, k))| (n, (t.0, k)))
                .collect::<BTreeMap<_, _>>(),
        )
    })
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

/// Checks what the recipe asks for against what a pass in place can do; returns the pass.
fn in_place_config(recipe: &Recipe, needs_stats: bool, has_stats: bool) -> PyResult<PassConfig> {
    if recipe
        .calibration
        .as_ref()
        .is_some_and(|c| c.mode == CalibrationMode::Sequential)
    {
        return Err(err("the recipe asks for sequential calibration, which the Python front does not run yet: use calibration mode one-pass (birdbone.calibrate), or `birdbone prune`"));
    }
    if needs_stats && !has_stats {
        return Err(err("the scorer needs activation statistics: pass stats= (birdbone.calibrate(model, batches) records them) or calibration="));
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
    Ok(cfg)
}

/// One pass over `params` (the live model's tensors, by name) as `recipe` says; returns the
/// report (JSON) and the masks (name -> bool tensor, true = kept). Plan, then commit in place;
/// a failure leaves every tensor as it was.
#[pyfunction]
#[pyo3(signature = (params, recipe, is_path, stats=None, plugin_dirs=None, keep_masks=true))]
fn prune(
    py: Python<'_>,
    params: Vec<(String, PyTensor)>,
    recipe: &str,
    is_path: bool,
    stats: Option<BTreeMap<String, (PyTensor, u64)>>,
    plugin_dirs: Option<Vec<PathBuf>>,
    keep_masks: bool,
) -> PyResult<(String, Py<PyDict>)> {
    let recipe = load_recipe(recipe, is_path)?;
    let dirs = dirs_or_default(plugin_dirs);
    let reg = registry(&dirs);
    let mut pruner = pruner_for(&recipe, &reg)?;
    let mut cfg = in_place_config(&recipe, pruner.needs_activations(), stats.is_some())?;
    if pruner.needs_hessians() {
        return Err(err(format!(
            "strategy '{}' needs the Hessians (XᵀX) of every Linear's inputs, which the Python calibrator does not record yet: use `birdbone prune`",
            recipe.strategy.name
        )));
    }
    cfg.keep_masks = keep_masks;
    let params = to_params(params);
    let stats = to_stats(stats);
    let has_allocator = recipe.allocator.is_some();
    let (report, masks) = py
        .allow_threads(move || -> birdbone_tch::Result<_> {
            let inputs = PassInputs {
                stats: stats.as_ref(),
                ..Default::default()
            };
            if has_allocator {
                cfg.allocation = Some(Arc::new(pruner.allocate(&params, &cfg, inputs)?));
            }
            pruner.run(&params, &cfg, inputs)
        })
        .map_err(err)?;
    let json = serde_json::to_string(&report).map_err(err)?;
    Ok((json, masks_dict(py, &masks)?))
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
        let comp = Compression::new(pruner, cfg).map_err(err)?;
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
        stats: Option<BTreeMap<String, (PyTensor, u64)>>,
    ) -> PyResult<String> {
        let params = to_params(params);
        let stats = to_stats(stats);
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
    m.add_function(wrap_pyfunction!(plugins, m)?)?;
    m.add_function(wrap_pyfunction!(token_windows, m)?)?;
    m.add_function(wrap_pyfunction!(calibrate_folder, m)?)?;
    m.add_class::<Compressor>()?;
    Ok(())
}
