//! Whether a plugin file may be loaded, decided before any of its code runs in this process.
//!
//! Loading a shared library runs its constructors, so every check that can be made without
//! loading it is made first, in this order (docs/plugins-trust.md):
//!
//! 1. It is a regular file, behind a symbolic link or not. A FIFO, a socket, a device or a folder
//!    is refused and never opened.
//! 2. Neither the file nor its folder (nor, behind a link, the target's folder) is writable by
//!    group or others, and each is owned by this user or root.
//!    [`TrustPolicy::allow_insecure_permissions`] lifts this check.
//! 3. It is read once, through a descriptor opened without blocking and checked to be the file
//!    that was inspected, and hashed (SHA-256). With an [`Allowlist`], only listed hashes go on.
//! 4. Those bytes are written into a private folder (mode 0700, made for this one file), and the
//!    probe (`birdbone-plugin-probe`, a child process) loads that copy and runs the ABI checks
//!    and the manifest, under a time limit. A constructor that aborts, exits or hangs ends the
//!    probe, not the host.
//! 5. The copy is hashed again and, if unchanged, loaded into this process: the bytes that were
//!    checked are the bytes that run, whatever happens to the original meanwhile.
//!
//! A plugin that passes all of this runs in this process with all of its rights: these checks
//! stop accidents and casual tampering, not a plugin written to do harm.

use std::{
    collections::BTreeSet,
    ffi::OsStr,
    fs,
    io::{self, Read},
    os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Set (to `1`, `true` or `yes`) to load plugins whose file or folder is writable by group or
/// others or owned by another user ([`TrustPolicy::allow_insecure_permissions`]).
pub const ALLOW_INSECURE_ENV: &str = "BIRDBONE_PLUGIN_ALLOW_INSECURE";
/// A file of SHA-256 hashes (`sha256sum` output, or one hex hash a line): only those load.
pub const ALLOWLIST_ENV: &str = "BIRDBONE_PLUGIN_ALLOWLIST";
/// The probe binary to use, or `off` to load without probing.
pub const PROBE_ENV: &str = "BIRDBONE_PLUGIN_PROBE";
/// Set to refuse every plugin when no usable probe is found ([`TrustPolicy::require_probe`]).
pub const REQUIRE_PROBE_ENV: &str = "BIRDBONE_PLUGIN_REQUIRE_PROBE";
/// The probe's time limit in seconds (default 10).
pub const PROBE_TIMEOUT_ENV: &str = "BIRDBONE_PLUGIN_PROBE_TIMEOUT";
/// The probe's file name, looked for beside the executable and in its parent folder.
pub const PROBE_NAME: &str = "birdbone-plugin-probe";
/// The probe's default time limit.
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a registry checks before it loads a plugin file.
#[derive(Clone, Debug)]
pub struct TrustPolicy {
    /// Load files and folders that are writable by group or others, or owned by a user other
    /// than this one and root. Off by default.
    pub allow_insecure_permissions: bool,
    /// When set, only files whose SHA-256 is listed load.
    pub allowlist: Option<Allowlist>,
    /// Which probe runs a new file in a child process before it is loaded here.
    pub probe: ProbeChoice,
    /// Refuse every new file when no usable probe is found (by default such files load
    /// unprobed, with a warning).
    pub require_probe: bool,
    /// How long the probe may take for one file.
    pub probe_timeout: Duration,
}

impl Default for TrustPolicy {
    /// Every check on, the probe found beside the executable, 10 s for it.
    fn default() -> TrustPolicy {
        TrustPolicy {
            allow_insecure_permissions: false,
            allowlist: None,
            probe: ProbeChoice::Auto,
            require_probe: false,
            probe_timeout: DEFAULT_PROBE_TIMEOUT,
        }
    }
}

fn truthy(name: &str) -> bool {
    std::env::var(name)
        .map(|v| matches!(v.trim(), "1" | "true" | "yes" | "on"))
        .unwrap_or(false)
}

impl TrustPolicy {
    /// The default policy with the overrides of the environment: [`ALLOW_INSECURE_ENV`],
    /// [`ALLOWLIST_ENV`], [`PROBE_ENV`], [`REQUIRE_PROBE_ENV`], [`PROBE_TIMEOUT_ENV`]. An
    /// allowlist file that cannot be read admits nothing.
    pub fn from_env() -> TrustPolicy {
        let mut p = TrustPolicy {
            allow_insecure_permissions: truthy(ALLOW_INSECURE_ENV),
            require_probe: truthy(REQUIRE_PROBE_ENV),
            ..TrustPolicy::default()
        };
        if let Some(file) = std::env::var_os(ALLOWLIST_ENV).filter(|f| !f.is_empty()) {
            let file = PathBuf::from(file);
            p.allowlist = Some(Allowlist::from_file(&file).unwrap_or_else(|e| Allowlist {
                hashes: BTreeSet::new(),
                source: format!("{} (unreadable: {e})", file.display()),
            }));
        }
        match std::env::var_os(PROBE_ENV) {
            Some(v) if v == "off" => p.probe = ProbeChoice::Off,
            Some(v) if !v.is_empty() => p.probe = ProbeChoice::Binary(v.into()),
            _ => {}
        }
        if let Some(secs) = std::env::var(PROBE_TIMEOUT_ENV)
            .ok()
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s > 0.0)
        {
            p.probe_timeout = Duration::from_secs_f64(secs);
        }
        p
    }
}

/// Which probe a registry runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeChoice {
    /// [`PROBE_NAME`] beside the current executable, else in its parent folder (a test binary
    /// in `target/<profile>/deps`).
    Auto,
    /// This binary.
    Binary(PathBuf),
    /// No probe: files load in this process directly (with `require_probe`, nothing loads).
    Off,
}

impl ProbeChoice {
    /// The probe binary, if there is one.
    pub fn find(&self) -> Option<PathBuf> {
        match self {
            ProbeChoice::Off => None,
            ProbeChoice::Binary(p) => Some(p.clone()).filter(|p| p.is_file()),
            ProbeChoice::Auto => {
                let exe = std::env::current_exe().ok()?;
                let dir = exe.parent()?;
                let found = [Some(dir), dir.parent()]
                    .into_iter()
                    .flatten()
                    .map(|d| d.join(PROBE_NAME))
                    .find(|p| p.is_file());
                found
            }
        }
    }
}

/// SHA-256 hashes (lower-case hex) of the plugin files a registry may load.
#[derive(Clone, Debug, Default)]
pub struct Allowlist {
    /// The hashes.
    pub hashes: BTreeSet<String>,
    /// Where they came from, for messages.
    pub source: String,
}

impl Allowlist {
    /// An allowlist of these hashes (hex, any case).
    pub fn new<S: AsRef<str>>(hashes: impl IntoIterator<Item = S>) -> Allowlist {
        Allowlist {
            hashes: hashes
                .into_iter()
                .map(|h| h.as_ref().trim().to_ascii_lowercase())
                .collect(),
            source: "the trust policy's allowlist".into(),
        }
    }

    /// Reads `sha256sum` output, or one hash a line; `#` starts a comment.
    pub fn from_file(path: &Path) -> io::Result<Allowlist> {
        let text = fs::read_to_string(path)?;
        let hashes = text
            .lines()
            .map(|l| l.split('#').next().unwrap_or(""))
            .filter_map(|l| l.split_whitespace().next())
            .map(|h| h.trim_start_matches('\\').to_ascii_lowercase());
        Ok(Allowlist {
            hashes: hashes.collect(),
            source: path.display().to_string(),
        })
    }

    /// Whether `sha256` (lower-case hex) is listed.
    pub fn contains(&self, sha256: &str) -> bool {
        self.hashes.contains(sha256)
    }
}

/// The SHA-256 of `bytes`, in lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A plugin file that passed checks 1 to 3: its bytes and their hash.
pub(crate) struct Admitted {
    pub bytes: Vec<u8>,
    pub sha256: String,
}

fn kind_of(ft: fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_block_device() {
        "a block device"
    } else if ft.is_dir() {
        "a folder"
    } else {
        "not a regular file"
    }
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Why `meta` (of the file or folder `what`) may not be trusted, if it may not.
fn insecure(meta: &fs::Metadata, what: &str) -> Option<String> {
    let (uid, me) = (meta.uid(), euid());
    if uid != me && uid != 0 {
        return Some(format!(
            "{what} is owned by user {uid}, neither this user ({me}) nor root"
        ));
    }
    let by = match (meta.mode() & 0o020 != 0, meta.mode() & 0o002 != 0) {
        (true, true) => "group and others",
        (true, false) => "its group",
        (false, true) => "others",
        (false, false) => return None,
    };
    Some(format!(
        "{what} is writable by {by} (mode {:o})",
        meta.mode() & 0o7777
    ))
}

fn folder_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Checks 1 to 3: the kind of file, permissions, the allowlist; reads the file once.
pub(crate) fn admit(path: &Path, policy: &TrustPolicy) -> Result<Admitted, String> {
    let link = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err("no such file".into()),
        Err(e) => return Err(format!("cannot inspect it: {e}")),
    };
    let via_link = link.file_type().is_symlink();
    let meta = fs::metadata(path)
        .map_err(|e| format!("a symbolic link whose target cannot be inspected ({e})"))?;
    if !meta.file_type().is_file() {
        return Err(format!(
            "not a regular file ({}{}); plugins must be regular files, so it was not opened",
            kind_of(meta.file_type()),
            if via_link {
                " behind a symbolic link"
            } else {
                ""
            }
        ));
    }
    if !policy.allow_insecure_permissions {
        let mut problems = vec![insecure(&meta, "the file")];
        let folder = folder_of(path);
        let folder_meta = fs::metadata(&folder)
            .map_err(|e| format!("cannot inspect its folder {}: {e}", folder.display()))?;
        problems.push(insecure(
            &folder_meta,
            &format!("its folder {}", folder.display()),
        ));
        if via_link {
            let target = fs::canonicalize(path)
                .map_err(|e| format!("cannot resolve its symbolic link: {e}"))?;
            let tfolder = folder_of(&target);
            if tfolder != folder {
                let m = fs::metadata(&tfolder)
                    .map_err(|e| format!("cannot inspect {}: {e}", tfolder.display()))?;
                problems.push(insecure(
                    &m,
                    &format!("its target's folder {}", tfolder.display()),
                ));
            }
        }
        let problems: Vec<String> = problems.into_iter().flatten().collect();
        if !problems.is_empty() {
            return Err(format!(
                "{}: anyone who can write there could run code in this process (fix the permissions, e.g. chmod go-w, or allow it with {ALLOW_INSECURE_ENV}=1 or TrustPolicy::allow_insecure_permissions)",
                problems.join("; ")
            ));
        }
    }
    // O_NONBLOCK: should the path have become a FIFO since, opening it does not wait for a
    // writer; the descriptor is then checked to be the regular file inspected above.
    let mut file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| format!("cannot open it: {e}"))?;
    let opened = file
        .metadata()
        .map_err(|e| format!("cannot inspect it: {e}"))?;
    if !opened.file_type().is_file() || (opened.dev(), opened.ino()) != (meta.dev(), meta.ino()) {
        return Err("it was replaced while it was being checked".into());
    }
    if !policy.allow_insecure_permissions {
        if let Some(p) = insecure(&opened, "the file") {
            return Err(format!("{p} (it changed while it was being checked)"));
        }
    }
    let mut bytes = Vec::with_capacity(opened.len() as usize);
    file.read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read it: {e}"))?;
    let sha256 = sha256_hex(&bytes);
    if let Some(list) = &policy.allowlist {
        if !list.contains(&sha256) {
            return Err(format!(
                "its SHA-256 {sha256} is not in the allowlist ({})",
                list.source
            ));
        }
    }
    Ok(Admitted { bytes, sha256 })
}

/// A plugin's bytes in a folder of their own (mode 0700, in the temporary folder), removed with
/// the value. A library loaded from it stays mapped after the file is gone.
pub(crate) struct PrivateCopy {
    dir: PathBuf,
    /// The copy.
    pub path: PathBuf,
}

impl PrivateCopy {
    pub fn create(name: &OsStr, bytes: &[u8]) -> io::Result<PrivateCopy> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let base = std::env::temp_dir();
        let mut attempt = 0;
        let dir = loop {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            let dir = base.join(format!(
                "birdbone-plugin-{}-{}-{nanos:08x}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            ));
            // Never an existing folder: one made by someone else could be theirs to change.
            match fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => break dir,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt < 100 => attempt += 1,
                Err(e) => return Err(e),
            }
        };
        let copy = PrivateCopy {
            path: dir.join(name),
            dir,
        };
        let m = fs::symlink_metadata(&copy.dir)?;
        if !m.is_dir() || m.uid() != euid() || m.mode() & 0o077 != 0 {
            return Err(io::Error::other(format!(
                "{} is not a private folder of this user",
                copy.dir.display()
            )));
        }
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o500)
            .open(&copy.path)?;
        io::Write::write_all(&mut f, bytes)?;
        Ok(copy)
    }

    /// The SHA-256 of the copy as it is now.
    pub fn sha256(&self) -> io::Result<String> {
        Ok(sha256_hex(&fs::read(&self.path)?))
    }
}

impl Drop for PrivateCopy {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
        let _ = fs::remove_dir(&self.dir);
    }
}

/// What the probe says about one library (its standard output's last line, as JSON).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ProbeReport {
    /// The `birdbone-host` version the probe was built from.
    pub probe_version: String,
    /// The plugin ABI the probe's host code speaks.
    pub host_abi: String,
    /// Whether the library passed every check of a load.
    pub ok: bool,
    /// Why not, as a registry would say it.
    pub reason: Option<String>,
    /// The plugin's ABI version, once read.
    pub abi: Option<String>,
    /// The plugin's name and version, from its manifest.
    pub name: Option<String>,
    /// The plugin's version.
    pub version: Option<String>,
    /// Its components' names.
    pub components: Vec<String>,
}

impl ProbeReport {
    /// An empty report stamped with this build's versions.
    pub fn new() -> ProbeReport {
        ProbeReport {
            probe_version: env!("CARGO_PKG_VERSION").into(),
            host_abi: birdbone_host_api::AbiVersion::CURRENT.to_string(),
            ..ProbeReport::default()
        }
    }
}

/// Why a probe gave no report.
pub(crate) enum ProbeFailure {
    /// The library made the probe crash, exit or hang: refuse it.
    Refused(String),
    /// The probe itself could not be used (missing, of another build): no verdict.
    Unusable(String),
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGABRT => "SIGABRT",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGBUS => "SIGBUS",
        libc::SIGILL => "SIGILL",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGTERM => "SIGTERM",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGSYS => "SIGSYS",
        libc::SIGPIPE => "SIGPIPE",
        _ => "a signal",
    }
}

fn tail(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let last = lines[lines.len().saturating_sub(3)..].join(" | ");
    if last.is_empty() {
        String::new()
    } else {
        format!(
            "; its last words: {}",
            last.chars().take(600).collect::<String>()
        )
    }
}

fn read_limited(r: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let mut r = r.take(1 << 20);
        let _ = r.read_to_end(&mut buf);
        // Whatever comes after the first MiB is drained, so the probe never blocks on a pipe.
        let _ = io::copy(&mut r.into_inner(), &mut io::sink());
        buf
    })
}

/// Whether `pid` has exited, without reaping it (so its process group stays reserved).
fn exited(pid: i32) -> bool {
    // SAFETY: siginfo_t is plain data; waitid only writes into it.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let r = libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        );
        r != 0 || info.si_pid() != 0
    }
}

/// Runs `probe` on `lib` in its own process group, killed (with anything it started) after
/// `timeout`.
pub(crate) fn run_probe(
    probe: &Path,
    lib: &Path,
    timeout: Duration,
) -> Result<ProbeReport, ProbeFailure> {
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    let mut child = Command::new(probe)
        .arg(lib)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| ProbeFailure::Unusable(format!("{} cannot run: {e}", probe.display())))?;
    let pid = child.id() as i32;
    let out = read_limited(child.stdout.take().expect("piped"));
    let err = read_limited(child.stderr.take().expect("piped"));
    let started = Instant::now();
    let mut nap = Duration::from_millis(1);
    let mut timed_out = false;
    while !exited(pid) {
        if started.elapsed() >= timeout {
            timed_out = true;
            break;
        }
        std::thread::sleep(nap);
        nap = (nap * 2).min(Duration::from_millis(50));
    }
    // The group outlives its leader only through what the library started: end it all.
    // SAFETY: the leader is not reaped yet, so the group id is still this probe's.
    unsafe { libc::kill(-pid, libc::SIGKILL) };
    let status = child.wait();
    let (out, err) = (
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    );
    if timed_out {
        return Err(ProbeFailure::Refused(format!(
            "the probe process timed out after {} s while loading it (a constructor or its root module hangs?), so it was not loaded",
            fmt_secs(timeout)
        )));
    }
    let status = status.map_err(|e| ProbeFailure::Unusable(format!("waiting for it: {e}")))?;
    if let Some(sig) = status.signal() {
        return Err(ProbeFailure::Refused(format!(
            "the probe process was killed by signal {sig} ({}) while loading it, so it was not loaded here{}",
            signal_name(sig),
            tail(&err)
        )));
    }
    if !status.success() {
        return Err(ProbeFailure::Refused(format!(
            "the probe process exited with status {} while loading it, so it was not loaded here{}",
            status.code().unwrap_or(-1),
            tail(&err)
        )));
    }
    let text = String::from_utf8_lossy(&out);
    let last = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    let report: ProbeReport = serde_json::from_str(last).map_err(|e| {
        ProbeFailure::Refused(format!(
            "the probe's answer could not be read ({e}): something printed over it while loading{}",
            tail(&out)
        ))
    })?;
    let ours = ProbeReport::new();
    if (&report.probe_version, &report.host_abi) != (&ours.probe_version, &ours.host_abi) {
        return Err(ProbeFailure::Unusable(format!(
            "{} is of another build (birdbone-host {}, ABI {}; this host: {}, ABI {}): rebuild it",
            probe.display(),
            report.probe_version,
            report.host_abi,
            ours.probe_version,
            ours.host_abi
        )));
    }
    Ok(report)
}

fn fmt_secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{}", s as u64)
    } else {
        format!("{s:.1}")
    }
}
