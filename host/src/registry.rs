//! Finding, loading and validating plugin libraries, and creating their components.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Mutex,
    },
    time::Instant,
};

use abi_stable::{
    library::{lib_header_from_path, LibraryError, RootModuleError},
    std_types::{RResult, RSlice, RVec},
};
use birdbone_host_api::{
    AbiVersion, ComponentInfo, ComponentKind, ConfigEntry, HostOps_Ref, ParamKind, ParamValue,
    PluginError, PluginManifest, PluginModule_Ref, ScorerBox, StrategyBox, HOST_CAPABILITIES,
};
use serde::Serialize;

use crate::{
    error::{Error, Result},
    trust::{self, PrivateCopy, ProbeFailure, ProbeReport, TrustPolicy},
    upgrade::{self, stamp, FileStamp, Upgrade},
};

/// The environment variable listing extra plugin folders or files, separated by `:`.
pub const PLUGIN_PATH_ENV: &str = "BIRDBONE_PLUGIN_PATH";

/// A loaded plugin library.
pub struct LoadedPlugin {
    /// Where it was loaded from.
    pub path: PathBuf,
    /// What it says about itself.
    pub manifest: PluginManifest,
    /// The SHA-256 (lower-case hex) of the bytes loaded.
    pub sha256: String,
    /// The private copy that was checked and loaded (removed once loaded: the mapping stays).
    pub loaded_from: PathBuf,
    module: PluginModule_Ref,
}

/// A file that was not loaded, or a component that was refused, and why.
#[derive(Clone, Debug, Serialize)]
pub struct Rejected {
    /// The file.
    pub path: PathBuf,
    /// Why, for a person.
    pub reason: String,
}

/// A component offered by a loaded plugin.
#[derive(Clone, Copy)]
pub struct ComponentRef<'a> {
    /// Its description.
    pub info: &'a ComponentInfo,
    /// The plugin offering it.
    pub plugin: &'a LoadedPlugin,
}

/// The plugins a host has loaded. Libraries are never unloaded. A file offering a component
/// already loaded replaces it when its plugin version is higher and the kind is the same
/// ([`Upgrade`]): components created from then on are the new version's, those created before
/// keep running the old code. A file changed in place is loaded again on the next scan. What is
/// checked before a file is loaded is its [`TrustPolicy`] (docs/plugins-trust.md).
pub struct PluginRegistry {
    plugins: Vec<LoadedPlugin>,
    rejected: Vec<Rejected>,
    upgrades: Vec<Upgrade>,
    // component name -> (plugin index, component index)
    components: BTreeMap<String, (usize, usize)>,
    // file -> what it was when last scanned (a file replaced in place is scanned again)
    seen: HashMap<PathBuf, Option<FileStamp>>,
    policy: TrustPolicy,
}

impl Default for PluginRegistry {
    /// [`PluginRegistry::new`].
    fn default() -> PluginRegistry {
        PluginRegistry::new()
    }
}

/// What loading one library's bytes in this process gave (the module, or why not) and the copy
/// it was loaded from. Libraries are never unloaded, so the same bytes are loaded once per
/// process, whichever file and registry they come from.
#[derive(Clone)]
struct Loaded {
    module: std::result::Result<PluginModule_Ref, String>,
    copy: PathBuf,
}

fn loaded_by_hash() -> &'static Mutex<HashMap<String, Loaded>> {
    static LOADED: std::sync::OnceLock<Mutex<HashMap<String, Loaded>>> = std::sync::OnceLock::new();
    LOADED.get_or_init(Default::default)
}

/// What one `load_*` call did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LoadSummary {
    /// Files loaded.
    pub loaded: Vec<PathBuf>,
    /// Files or components refused.
    pub rejected: Vec<Rejected>,
    /// Components replaced by a newer version.
    pub upgraded: Vec<Upgrade>,
    /// Seconds it took.
    pub seconds: f64,
}

fn is_shared_library(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("so" | "dylib" | "dll")
    )
}

/// Opens a plugin library and checks its layout against this host's.
///
/// abi_stable lets a prefix type (a table of functions) have more fields in the *library* than
/// in the loader: libraries may be newer. Birdbone's tables also flow the other way: the host's
/// [`birdbone_host_api::HostOps`] and plan context gain functions in later minors, and plugins
/// built against an earlier minor read only the fields they know. So the layout is checked with
/// the plugin's side as the interface: every table may be longer on the host's side, never
/// shorter, and every other type must match exactly. A plugin whose tables are longer than the
/// host's (built against a later minor) passes abi_stable's own direction instead, and is then
/// refused by the version check with a message saying so.
fn load_module(path: &Path) -> Result<PluginModule_Ref, LibraryError> {
    use abi_stable::{
        abi_stability::abi_checking::check_layout_compatibility, library::RootModule,
        std_types::RBoxError, StableAbi,
    };
    let header = lib_header_from_path(path)?;
    let major = |v| abi_stable::sabi_types::VersionNumber::new(v).map(|v| v.major);
    let same_major = matches!(
        (major(header.version_strings()), major(PluginModule_Ref::VERSION_STRINGS)),
        (Ok(a), Ok(b)) if a == b
    );
    let (true, Some(theirs)) = (same_major, header.layout()) else {
        // Another major (abi_stable's version error names it), or no layout to check.
        return header.init_root_module::<PluginModule_Ref>();
    };
    let ours = <PluginModule_Ref as StableAbi>::LAYOUT;
    match check_layout_compatibility(theirs, ours) {
        // SAFETY: the layouts were just checked compatible, host tables at least as long.
        Ok(()) => unsafe { header.init_root_module_with_unchecked_layout::<PluginModule_Ref>() },
        Err(_) => match check_layout_compatibility(ours, theirs) {
            // A newer plugin: safe to open and read its version, which the caller refuses.
            Ok(()) => header.init_root_module::<PluginModule_Ref>(),
            // Reported as abi_stable reports it: "expected" is the host's side.
            Err(e) => Err(LibraryError::AbiInstability(RBoxError::from_fmt(&e))),
        },
    }
}

fn explain(err: LibraryError) -> String {
    match err {
        LibraryError::OpenError { err, .. } => format!("not a loadable shared library ({err})"),
        LibraryError::GetSymbolError { .. } => {
            "not a Birdbone plugin: it exports no abi_stable root module (build it with birdbone_host_api::export_plugin!)".into()
        }
        LibraryError::IncompatibleVersionNumber { actual_version, .. } => format!(
            "built for Birdbone plugin ABI {}.x; this host speaks {} (majors must match: rebuild the plugin against this birdbone-host-api)",
            actual_version.major,
            AbiVersion::CURRENT
        ),
        LibraryError::AbiInstability(e) => {
            // abi_stable prints both layouts in full; a person needs its "Error:" lines.
            let detail = e.to_string();
            let lines: Vec<&str> = detail.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
            let mut found = Vec::new();
            for (i, l) in lines.iter().enumerate() {
                if let Some(what) = l.strip_prefix("Error:") {
                    let context: Vec<&str> = lines[i + 1..].iter().take(4).copied().collect();
                    found.push(format!("{what} ({})", context.join(" ")));
                }
            }
            format!(
                "its ABI layout differs from this host's (built against an incompatible birdbone-host-api): {}",
                if found.is_empty() { "abi_stable's layout check failed".to_string() } else { found.join("; ") }
            )
        }
        LibraryError::RootModule { err: RootModuleError::Unwound, .. } => "its root module panicked while loading".into(),
        LibraryError::RootModule { err: RootModuleError::Returned(e), .. } => format!("its root module failed to load: {e}"),
        LibraryError::InvalidAbiHeader(_) | LibraryError::InvalidCAbi { .. } => {
            "built with an abi_stable version this host cannot load".into()
        }
        other => other.to_string(),
    }
}

/// The checks a loaded module must pass: the Birdbone ABI version and the manifest.
fn check_module(module: PluginModule_Ref) -> std::result::Result<PluginManifest, String> {
    let abi = module.abi();
    if !AbiVersion::CURRENT.can_host(abi) {
        return Err(format!(
            "built against Birdbone plugin ABI {abi}; this host speaks {} and loads plugins of {}.0 to {} only (rebuild it, or update the host)",
            AbiVersion::CURRENT,
            AbiVersion::CURRENT.major,
            AbiVersion::CURRENT
        ));
    }
    let manifest = (module.manifest())()
        .into_result()
        .map_err(|e| format!("its manifest failed: {e}"))?;
    if manifest.abi != abi {
        return Err(format!(
            "its manifest claims ABI {} but its module {abi}",
            manifest.abi
        ));
    }
    Ok(manifest)
}

/// What `birdbone-plugin-probe` does in its own process: loads `path` as a registry would
/// (abi_stable's checks, the ABI version, the manifest) and says what it found.
pub fn probe_library(path: &Path) -> ProbeReport {
    let mut report = ProbeReport::new();
    let checked = load_module(path).map_err(explain).and_then(|module| {
        report.abi = Some(module.abi().to_string());
        check_module(module)
    });
    match checked {
        Ok(m) => {
            report.ok = true;
            report.name = Some(m.name.to_string());
            report.version = Some(m.version.to_string());
            report.components = m.components.iter().map(|c| c.name.to_string()).collect();
        }
        Err(reason) => report.reason = Some(reason),
    }
    report
}

impl PluginRegistry {
    /// An empty registry under [`TrustPolicy::from_env`]: every check on, unless the
    /// environment lifts one.
    pub fn new() -> PluginRegistry {
        PluginRegistry::with_policy(TrustPolicy::from_env())
    }

    /// An empty registry under `policy`.
    pub fn with_policy(policy: TrustPolicy) -> PluginRegistry {
        PluginRegistry {
            plugins: Vec::new(),
            rejected: Vec::new(),
            upgrades: Vec::new(),
            components: BTreeMap::new(),
            seen: HashMap::new(),
            policy,
        }
    }

    /// The checks made before a file is loaded.
    pub fn policy(&self) -> &TrustPolicy {
        &self.policy
    }

    /// Changes the checks for files loaded from now on.
    pub fn set_policy(&mut self, policy: TrustPolicy) {
        self.policy = policy;
    }

    /// Where an application finds plugins unless told: its executable's folder and that
    /// folder's `plugins/` (the layout of a release build and of an installed bundle).
    pub fn default_dirs() -> Vec<PathBuf> {
        let mut dirs = Vec::new();
        if let Some(exe_dir) = std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(|p| p.to_path_buf()))
        {
            dirs.push(exe_dir.join("plugins"));
            dirs.push(exe_dir);
        }
        dirs.into_iter().filter(|d| d.is_dir()).collect()
    }

    /// Loads every plugin of `dirs` and of [`PLUGIN_PATH_ENV`], under [`TrustPolicy::from_env`].
    pub fn discover(dirs: &[PathBuf]) -> PluginRegistry {
        PluginRegistry::discover_with(dirs, TrustPolicy::from_env())
    }

    /// [`PluginRegistry::discover`] under `policy`.
    pub fn discover_with(dirs: &[PathBuf], policy: TrustPolicy) -> PluginRegistry {
        let mut r = PluginRegistry::with_policy(policy);
        for d in dirs {
            r.load_dir(d);
        }
        r.load_env();
        r
    }

    /// Loads the folders and files listed in [`PLUGIN_PATH_ENV`].
    pub fn load_env(&mut self) -> LoadSummary {
        let mut summary = LoadSummary::default();
        if let Some(list) = std::env::var_os(PLUGIN_PATH_ENV) {
            for p in std::env::split_paths(&list) {
                let s = if p.is_dir() {
                    self.load_dir(&p)
                } else {
                    self.load_paths(&[p])
                };
                summary.loaded.extend(s.loaded);
                summary.rejected.extend(s.rejected);
                summary.upgraded.extend(s.upgraded);
                summary.seconds += s.seconds;
            }
        }
        summary
    }

    /// Loads every shared library in `dir` that is not loaded yet, in file-name order. Called
    /// again, it picks up files dropped in or replaced since (a live re-scan); a newer version
    /// of a loaded component replaces it ([`Upgrade`]).
    pub fn load_dir(&mut self, dir: &Path) -> LoadSummary {
        let started = Instant::now();
        let mut files = match std::fs::read_dir(dir) {
            Ok(rd) => rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| is_shared_library(p))
                .collect::<Vec<_>>(),
            Err(e) => {
                let r = Rejected {
                    path: dir.to_path_buf(),
                    reason: format!("cannot read plugin folder: {e}"),
                };
                self.rejected.push(r.clone());
                return LoadSummary {
                    rejected: vec![r],
                    ..LoadSummary::default()
                };
            }
        };
        files.sort();
        let mut s = self.load_paths(&files);
        s.seconds = started.elapsed().as_secs_f64();
        s
    }

    /// Loads the given library files (skipping ones already scanned and unchanged since).
    pub fn load_paths(&mut self, files: &[PathBuf]) -> LoadSummary {
        let started = Instant::now();
        let mut summary = LoadSummary::default();
        for path in files {
            let key = path.canonicalize().unwrap_or_else(|_| path.clone());
            let now = stamp(&key);
            if self.seen.insert(key, now) == Some(now) {
                continue;
            }
            let (before, upgrades_before) = (self.rejected.len(), self.upgrades.len());
            if let Ok(true) = self.load_one(path) {
                summary.loaded.push(path.clone());
            }
            summary
                .rejected
                .extend(self.rejected[before..].iter().cloned());
            summary
                .upgraded
                .extend(self.upgrades[upgrades_before..].iter().cloned());
        }
        summary.seconds = started.elapsed().as_secs_f64();
        summary
    }

    fn reject(&mut self, path: &Path, reason: String) -> Result<(), ()> {
        tracing::debug!(path = %path.display(), %reason, "plugin refused");
        self.rejected.push(Rejected {
            path: path.to_path_buf(),
            reason,
        });
        Err(())
    }

    /// `Ok(false)`: the same bytes were already loaded from this file.
    fn load_one(&mut self, path: &Path) -> Result<bool, ()> {
        let admitted = match trust::admit(path, &self.policy) {
            Ok(a) => a,
            Err(reason) => return self.reject(path, reason).map(|_| false),
        };
        if self
            .plugins
            .iter()
            .any(|p| p.path == path && p.sha256 == admitted.sha256)
        {
            return Ok(false);
        }
        let loaded = match self.load_admitted(path, &admitted) {
            Ok(l) => l,
            Err(reason) => return self.reject(path, reason).map(|_| false),
        };
        let module = match loaded.module {
            Ok(m) => m,
            Err(reason) => {
                let reason =
                    reason.replace(&*loaded.copy.to_string_lossy(), &path.to_string_lossy());
                return self.reject(path, reason).map(|_| false);
            }
        };
        let manifest = match check_module(module) {
            Ok(m) => m,
            Err(reason) => return self.reject(path, reason).map(|_| false),
        };
        let abi = manifest.abi;
        let index = self.plugins.len();
        let mut accepted = Vec::new();
        for (ci, c) in manifest.components.iter().enumerate() {
            let name = c.name.to_string();
            if let Some(missing) = c
                .capabilities
                .requires
                .iter()
                .find(|r| !HOST_CAPABILITIES.contains(&r.as_str()))
            {
                let _ = self.reject(
                    path,
                    format!("component '{name}' requires host capability '{missing}', which this host (ABI {}) lacks", AbiVersion::CURRENT),
                );
                continue;
            }
            if accepted.iter().any(|(n, _)| n == &name) {
                let _ = self.reject(
                    path,
                    format!("component '{name}' is listed twice in its manifest"),
                );
                continue;
            }
            if let Some(&(pi, oci)) = self.components.get(&name) {
                let old = &self.plugins[pi];
                let verdict = upgrade::judge(
                    &name,
                    (
                        &old.manifest.components[oci],
                        &old.manifest.version,
                        &old.path,
                    ),
                    (c, &manifest.version),
                );
                if let Err(reason) = verdict {
                    let _ = self.reject(path, reason);
                    continue;
                }
                self.upgrades.push(Upgrade {
                    component: name.clone(),
                    from_version: old.manifest.version.to_string(),
                    to_version: manifest.version.to_string(),
                    from: old.path.clone(),
                    to: path.to_path_buf(),
                });
                tracing::info!(component = %name, from = %old.manifest.version, to = %manifest.version, path = %path.display(), "component upgraded");
            }
            accepted.push((name, ci));
        }
        for (name, ci) in accepted {
            self.components.insert(name, (index, ci));
        }
        tracing::debug!(path = %path.display(), abi = %abi, "plugin loaded");
        self.plugins.push(LoadedPlugin {
            path: path.to_path_buf(),
            manifest,
            sha256: admitted.sha256,
            loaded_from: loaded.copy,
            module,
        });
        Ok(true)
    }

    /// Checks 4 and 5 of [`trust`]: a private copy of the admitted bytes, probed in a child
    /// process, hashed again and loaded here. The same bytes load once per process.
    fn load_admitted(&self, path: &Path, admitted: &trust::Admitted) -> Result<Loaded, String> {
        let cache = || loaded_by_hash().lock().unwrap_or_else(|e| e.into_inner());
        if let Some(hit) = cache().get(&admitted.sha256) {
            return Ok(hit.clone());
        }
        let name = path
            .file_name()
            .unwrap_or_else(|| std::ffi::OsStr::new("plugin.so"));
        let copy = PrivateCopy::create(name, &admitted.bytes)
            .map_err(|e| format!("cannot make a private copy of it to check: {e}"))?;
        let shown = |r: String| r.replace(&*copy.path.to_string_lossy(), &path.to_string_lossy());
        match self.policy.probe.find() {
            Some(probe) => match trust::run_probe(&probe, &copy.path, self.policy.probe_timeout) {
                Ok(ProbeReport { ok: true, .. }) => {}
                Ok(r) => {
                    return Err(shown(r.reason.unwrap_or_else(|| {
                        "the probe refused it without saying why".into()
                    })))
                }
                Err(ProbeFailure::Refused(r)) => return Err(shown(r)),
                Err(ProbeFailure::Unusable(r)) => self.unprobed(&r)?,
            },
            None => self.unprobed(&match &self.policy.probe {
                trust::ProbeChoice::Off => "probing is off".to_string(),
                trust::ProbeChoice::Binary(p) => {
                    format!("the plugin probe {} does not exist", p.display())
                }
                trust::ProbeChoice::Auto => format!(
                    "no plugin probe ({}) beside the executable or in its parent folder",
                    trust::PROBE_NAME
                ),
            })?,
        }
        match copy.sha256() {
            Ok(h) if h == admitted.sha256 => {}
            Ok(h) => {
                return Err(format!(
                    "its private copy changed after it was probed (SHA-256 {} became {h}), so it was not loaded",
                    admitted.sha256
                ))
            }
            Err(e) => return Err(format!("cannot re-read its private copy: {e}")),
        }
        let mut cache = cache();
        // Another thread may have loaded the same bytes meanwhile.
        if let Some(hit) = cache.get(&admitted.sha256) {
            return Ok(hit.clone());
        }
        let loaded = Loaded {
            module: load_module(&copy.path).map_err(explain),
            copy: copy.path.clone(),
        };
        cache.insert(admitted.sha256.clone(), loaded.clone());
        Ok(loaded)
    }

    /// A file about to load without a probe's verdict: refused if the policy requires one,
    /// else loaded with a warning (once per process).
    fn unprobed(&self, why: &str) -> Result<(), String> {
        static WARNED: AtomicBool = AtomicBool::new(false);
        if self.policy.require_probe {
            return Err(format!(
                "{why}, and the trust policy requires a probe ({}), so it was not loaded",
                trust::REQUIRE_PROBE_ENV
            ));
        }
        if self.policy.probe != trust::ProbeChoice::Off && !WARNED.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "{why}: plugins load without being probed in a child process first, so one whose constructor crashes takes this process with it (docs/plugins-trust.md)"
            );
        }
        Ok(())
    }

    /// The loaded plugins, those whose components were all replaced by newer versions
    /// included (libraries are never unloaded).
    pub fn plugins(&self) -> &[LoadedPlugin] {
        &self.plugins
    }

    /// Every file or component refused so far.
    pub fn rejected(&self) -> &[Rejected] {
        &self.rejected
    }

    /// Every component replaced by a newer version so far, oldest first.
    pub fn upgrades(&self) -> &[Upgrade] {
        &self.upgrades
    }

    /// The version of a component: its plugin's.
    pub fn version_of(&self, name: &str) -> Option<&str> {
        self.component(name)
            .map(|c| c.plugin.manifest.version.as_str())
    }

    /// Every usable component, by name.
    pub fn components(&self) -> impl Iterator<Item = ComponentRef<'_>> {
        self.components.values().map(|&(p, c)| ComponentRef {
            info: &self.plugins[p].manifest.components[c],
            plugin: &self.plugins[p],
        })
    }

    /// A component by name.
    pub fn component(&self, name: &str) -> Option<ComponentRef<'_>> {
        self.components.get(name).map(|&(p, c)| ComponentRef {
            info: &self.plugins[p].manifest.components[c],
            plugin: &self.plugins[p],
        })
    }

    fn find(&self, role: Role, name: &str) -> Result<ComponentRef<'_>> {
        match self.component(name) {
            Some(c) if Role::of(c.info) == role => Ok(c),
            _ => {
                let available: Vec<&str> = self
                    .components()
                    .filter(|c| Role::of(c.info) == role)
                    .map(|c| c.info.name.as_str())
                    .collect();
                Err(Error::UnknownComponent {
                    kind: role.name(),
                    name: name.to_string(),
                    available: if available.is_empty() {
                        "none".into()
                    } else {
                        available.join(", ")
                    },
                })
            }
        }
    }

    /// Creates scorer `name` from user settings (`key -> text`), validated against its
    /// parameters. `host` is the adapter's host-operation table, which the component keeps for
    /// its tensor work.
    pub fn create_scorer(
        &self,
        name: &str,
        settings: &BTreeMap<String, String>,
        host: HostOps_Ref,
    ) -> Result<Component<ScorerBox>> {
        self.create(Role::Scorer, name, settings, |module, config| {
            (module.create_scorer())(name.into(), config, host)
        })
    }

    /// Creates strategy `name` from user settings, like [`PluginRegistry::create_scorer`].
    pub fn create_strategy(
        &self,
        name: &str,
        settings: &BTreeMap<String, String>,
        host: HostOps_Ref,
    ) -> Result<Component<StrategyBox>> {
        self.create(Role::Strategy, name, settings, |module, config| {
            (module.create_strategy())(name.into(), config, host)
        })
    }

    /// Creates allocator `name` (ABI 1.2: a strategy-kind component that requires
    /// `plan.allocate`), like [`PluginRegistry::create_strategy`].
    pub fn create_allocator(
        &self,
        name: &str,
        settings: &BTreeMap<String, String>,
        host: HostOps_Ref,
    ) -> Result<Component<StrategyBox>> {
        self.create(Role::Allocator, name, settings, |module, config| {
            (module.create_strategy())(name.into(), config, host)
        })
    }

    fn create<T>(
        &self,
        kind: Role,
        name: &str,
        settings: &BTreeMap<String, String>,
        make: impl FnOnce(PluginModule_Ref, RSlice<'_, ConfigEntry>) -> RResult<T, PluginError>,
    ) -> Result<Component<T>> {
        let c = self.find(kind, name)?;
        if kind == Role::Allocator && c.plugin.manifest.abi.minor < 2 {
            // Strategy::allocate came in 1.2: an older plugin's table has no such entry.
            return Err(Error::Invalid(format!(
                "'{name}' claims to be an allocator, but its plugin was built against ABI {}; allocators need 1.2",
                c.plugin.manifest.abi
            )));
        }
        let config = complete_config(c.info, settings)?;
        let object = make(c.plugin.module, config.as_slice().into())
            .into_result()
            .map_err(|error| Error::Plugin {
                component: name.into(),
                param: "creation".into(),
                error,
            })?;
        Ok(Component {
            name: name.into(),
            info: c.info.clone(),
            config,
            object,
        })
    }
}

/// A created scorer or strategy, with what it was created from.
pub struct Component<T> {
    /// Its name.
    pub name: String,
    /// Its description.
    pub info: ComponentInfo,
    /// The configuration it was given (defaults filled in).
    pub config: RVec<ConfigEntry>,
    /// The trait object.
    pub object: T,
}

impl<T> Component<T> {
    /// The component and its configuration in words, as a report names it:
    /// `name(key=value, ...)`.
    pub fn describe(&self) -> String {
        let cfg: Vec<String> = self
            .config
            .iter()
            .map(|e| format!("{}={}", e.name, e.value))
            .collect();
        if cfg.is_empty() {
            self.name.clone()
        } else {
            format!("{}({})", self.name, cfg.join(", "))
        }
    }
}

/// What a component is for: ABI 1.x has two component kinds, and an allocator (1.2) is a
/// strategy-kind component marked by requiring `plan.allocate`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Turns weights into scores.
    Scorer,
    /// Turns scores into decisions.
    Strategy,
    /// Sets each parameter's sparsity before selection.
    Allocator,
}

impl Role {
    /// The role of a component.
    pub fn of(info: &ComponentInfo) -> Role {
        match info.kind {
            ComponentKind::Scorer => Role::Scorer,
            ComponentKind::Strategy if info.is_allocator() => Role::Allocator,
            ComponentKind::Strategy => Role::Strategy,
        }
    }

    /// Its name, as errors and listings write it.
    pub fn name(self) -> &'static str {
        match self {
            Role::Scorer => "scorer",
            Role::Strategy => "strategy",
            Role::Allocator => "allocator",
        }
    }
}

fn parse_value(kind: ParamKind, text: &str) -> Option<ParamValue> {
    Some(match kind {
        ParamKind::Bool => ParamValue::Bool(match text {
            "true" | "1" | "yes" | "on" => true,
            "false" | "0" | "no" | "off" => false,
            _ => return None,
        }),
        ParamKind::Int => ParamValue::Int(text.parse().ok()?),
        ParamKind::Float => ParamValue::Float(text.parse().ok().filter(|v: &f64| v.is_finite())?),
        ParamKind::Str => ParamValue::Str(text.into()),
    })
}

/// Checks user settings against a component's parameters and fills in defaults.
pub fn complete_config(
    info: &ComponentInfo,
    settings: &BTreeMap<String, String>,
) -> Result<RVec<ConfigEntry>> {
    let known: Vec<&str> = info.params.iter().map(|p| p.name.as_str()).collect();
    for key in settings.keys() {
        if !known.contains(&key.as_str()) {
            return Err(Error::Config {
                component: info.name.to_string(),
                message: format!(
                    "unknown parameter '{key}' (it takes: {})",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            });
        }
    }
    info.params
        .iter()
        .map(|spec| {
            let value = match settings.get(spec.name.as_str()) {
                None => spec.default.clone(),
                Some(text) => parse_value(spec.kind, text).ok_or_else(|| Error::Config {
                    component: info.name.to_string(),
                    message: format!(
                        "parameter '{}' wants a {:?}, got '{text}'",
                        spec.name, spec.kind
                    ),
                })?,
            };
            Ok(ConfigEntry {
                name: spec.name.clone(),
                value,
            })
        })
        .collect::<Result<Vec<_>>>()
        .map(RVec::from)
}
