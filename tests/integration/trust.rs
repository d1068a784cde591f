//! Plugin trust (docs/plugins-trust.md): what is refused before a plugin's code runs in this
//! process, and what the probe catches in a child process. Every refusal here would, without
//! the checks, hang the scan, load a file others can change, or end the test process.

use std::{
    ffi::CString,
    os::unix::{
        ffi::OsStrExt,
        fs::{symlink, PermissionsExt},
    },
    path::{Path, PathBuf},
    process::Command,
    sync::{
        atomic::{AtomicUsize, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use birdbone_host::{Allowlist, LoadSummary, ProbeChoice, TrustPolicy};
use birdbone_tch::{host_ops, PluginRegistry};
use birdbone_tests::*;
use serde_json::Value;

/// Every check on, the workspace's probe, and no loading without it.
fn policy() -> TrustPolicy {
    TrustPolicy {
        probe: ProbeChoice::Binary(probe_binary()),
        require_probe: true,
        ..TrustPolicy::default()
    }
}

/// A copy of `src` named `name` in `dir`, with bytes no other test loads: a trailer after the
/// ELF data (which the loader ignores) gives it a new hash, so this process has not loaded it
/// yet and every check runs on it.
fn fresh_copy(src: &Path, dir: &Path, name: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let mut bytes = std::fs::read(src).unwrap();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    bytes.extend_from_slice(
        format!(
            "\0trust test {name} {} {nanos} {}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        )
        .as_bytes(),
    );
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn load_alone(path: &Path, policy: TrustPolicy) -> (PluginRegistry, LoadSummary) {
    let mut reg = PluginRegistry::with_policy(policy);
    let s = reg.load_paths(&[path.to_path_buf()]);
    (reg, s)
}

fn reason(s: &LoadSummary, needle: &str) -> String {
    s.rejected
        .iter()
        .find(|r| r.path.to_string_lossy().contains(needle))
        .unwrap_or_else(|| panic!("{needle} was not refused: {:?}", s.rejected))
        .reason
        .clone()
}

/// `sha256sum`'s hash of a file: an implementation other than the host's.
fn sha256sum(p: &Path) -> String {
    let out = Command::new("sha256sum").arg(p).output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

#[test]
fn fifos_sockets_and_devices_named_so_are_refused_without_being_opened() {
    let dir = tempfile::tempdir().unwrap();
    let mkfifo = |name: &str| {
        let fifo = dir.path().join(name);
        let c = CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid C string; mkfifo only creates the node.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        fifo
    };
    mkfifo("x.so");
    // (A link to x.so itself would be skipped as the same file, once x.so was scanned.)
    symlink(mkfifo("other.fifo"), dir.path().join("link-to-fifo.so")).unwrap();
    let _socket = std::os::unix::net::UnixListener::bind(dir.path().join("socket.so")).unwrap();
    symlink("/dev/null", dir.path().join("null.so")).unwrap();
    std::fs::create_dir(dir.path().join("folder.so")).unwrap();
    fresh_copy(
        &plugin_file("birdbone_plugin_magnitude"),
        dir.path(),
        "libmagnitude.so",
    );

    // Opening the FIFO (as dlopen does) would wait for a writer forever: scan on another thread.
    let (tx, rx) = mpsc::channel();
    let path = dir.path().to_path_buf();
    std::thread::spawn(move || {
        let mut reg = PluginRegistry::with_policy(policy());
        let s = reg.load_dir(&path);
        let names: Vec<String> = reg.components().map(|c| c.info.name.to_string()).collect();
        tx.send((s, names)).unwrap();
    });
    let (s, names) = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the plugin scan hung on a FIFO named x.so");
    let not_regular = "plugins must be regular files, so it was not opened";
    for (file, kind) in [
        ("/x.so", "not a regular file (a FIFO)"),
        ("socket.so", "not a regular file (a socket)"),
        ("link-to-fifo.so", "(a FIFO behind a symbolic link)"),
        ("null.so", "(a character device behind a symbolic link)"),
        ("folder.so", "(a folder)"),
    ] {
        let r = reason(&s, file);
        assert!(r.contains(kind) && r.contains(not_regular), "{file}: {r}");
    }
    assert_eq!(s.rejected.len(), 5, "{:?}", s.rejected);
    // The plugin beside them loads.
    assert_eq!(s.loaded.len(), 1);
    assert_eq!(names, ["magnitude"]);
}

#[test]
fn plugin_files_and_folders_others_can_write_are_refused_unless_allowed() {
    let src = plugin_file("birdbone_plugin_nm");
    let private = tempfile::tempdir().unwrap();
    let open_to_all = fresh_copy(&src, private.path(), "libnm-666.so");
    chmod(&open_to_all, 0o666);
    let open_to_group = fresh_copy(&src, private.path(), "libnm-775.so");
    chmod(&open_to_group, 0o775);
    let open_folder = tempfile::tempdir().unwrap();
    chmod(open_folder.path(), 0o777);
    let in_open_folder = fresh_copy(&src, open_folder.path(), "libnm-in-777.so");
    let mut cases = vec![
        (
            open_to_all,
            "the file is writable by group and others (mode 666)".to_string(),
        ),
        (
            open_to_group,
            "the file is writable by its group (mode 775)".to_string(),
        ),
        (
            in_open_folder,
            format!(
                "its folder {} is writable by group and others (mode 777)",
                open_folder.path().display()
            ),
        ),
    ];
    // Owned by someone else: only root can give a file or folder away.
    // SAFETY: geteuid cannot fail.
    let _theirs = if unsafe { libc::geteuid() } == 0 {
        let theirs = tempfile::tempdir().unwrap();
        let file = fresh_copy(&src, theirs.path(), "libnm-theirs.so");
        std::os::unix::fs::chown(&file, Some(65534), Some(65534)).unwrap();
        cases.push((file, "the file is owned by user 65534".into()));
        let theirs_open = theirs.path().join("open");
        std::fs::create_dir(&theirs_open).unwrap();
        let file = fresh_copy(&src, &theirs_open, "libnm-their-folder.so");
        std::os::unix::fs::chown(&theirs_open, Some(65534), Some(65534)).unwrap();
        chmod(&theirs_open, 0o777);
        cases.push((
            file,
            format!(
                "its folder {} is owned by user 65534",
                theirs_open.display()
            ),
        ));
        Some(theirs)
    } else {
        eprintln!("not root: files owned by another user are not tried");
        None
    };
    for (file, why) in &cases {
        let (reg, s) = load_alone(file, policy());
        let r = reason(&s, &file.file_name().unwrap().to_string_lossy());
        assert!(
            r.contains(why) && r.contains("BIRDBONE_PLUGIN_ALLOW_INSECURE=1"),
            "{}: {r}",
            file.display()
        );
        assert!(s.loaded.is_empty() && reg.components().next().is_none());
        // Allowed explicitly, the same file loads and works.
        let (reg, s) = load_alone(
            file,
            TrustPolicy {
                allow_insecure_permissions: true,
                ..policy()
            },
        );
        assert!(s.rejected.is_empty(), "{:?}", s.rejected);
        assert!(reg
            .create_strategy("nm", &Default::default(), host_ops())
            .is_ok());
    }
}

#[test]
fn an_allowlist_admits_exactly_the_listed_hashes() {
    let dir = tempfile::tempdir().unwrap();
    let so = fresh_copy(
        &plugin_file("birdbone_plugin_wanda"),
        dir.path(),
        "libwanda-listed.so",
    );
    let sum = sha256sum(&so);

    let wrong = Allowlist::new(["0".repeat(64), sum.replace(&sum[..4], "ffff")]);
    let (reg, s) = load_alone(
        &so,
        TrustPolicy {
            allowlist: Some(wrong),
            ..policy()
        },
    );
    let r = reason(&s, "libwanda-listed.so");
    assert!(
        r.contains(&format!("its SHA-256 {sum} is not in the allowlist")),
        "{r}"
    );
    assert!(reg.components().next().is_none());

    // sha256sum's own output, as a file: the hash in upper case and a comment are fine too.
    let list = dir.path().join("allowed.txt");
    let out = Command::new("sha256sum").arg(&so).output().unwrap();
    let mut text = b"# plugins this machine may load\n".to_vec();
    text.extend_from_slice(&out.stdout);
    std::fs::write(&list, text).unwrap();
    for allow in [
        Allowlist::from_file(&list).unwrap(),
        Allowlist::new([sum.to_uppercase()]),
    ] {
        let (reg, s) = load_alone(
            &so,
            TrustPolicy {
                allowlist: Some(allow),
                ..policy()
            },
        );
        assert!(s.rejected.is_empty(), "{:?}", s.rejected);
        assert_eq!(reg.plugins()[0].sha256, sum);
        assert!(reg.component("wanda").is_some());
    }
}

#[test]
fn plugins_whose_constructors_abort_or_exit_are_refused_and_the_host_lives_on() {
    let dir = plugin_dir_with(&[
        plugin_file("birdbone_fixture_plugin_init_aborts"),
        plugin_file("birdbone_fixture_plugin_init_exits"),
    ]);
    fresh_copy(
        &plugin_file("birdbone_plugin_global"),
        dir.path(),
        "libglobal.so",
    );
    let mut reg = PluginRegistry::with_policy(policy());
    let s = reg.load_dir(dir.path());
    // Loaded in this process, either would have ended it here.
    let r = reason(&s, "init_aborts");
    assert!(
        r.contains("the probe process was killed by signal 6 (SIGABRT)"),
        "{r}"
    );
    let r = reason(&s, "init_exits");
    assert!(r.contains("the probe process exited with status 3"), "{r}");
    assert_eq!(s.rejected.len(), 2, "{:?}", s.rejected);
    assert_eq!(s.loaded.len(), 1);
    assert!(reg
        .create_strategy("global", &Default::default(), host_ops())
        .is_ok());
}

#[test]
fn a_plugin_that_hangs_while_loading_is_refused_after_the_time_limit() {
    let dir = plugin_dir_with(&[plugin_file("birdbone_fixture_plugin_init_hangs")]);
    let started = Instant::now();
    let mut reg = PluginRegistry::with_policy(TrustPolicy {
        probe_timeout: Duration::from_secs(1),
        ..policy()
    });
    let s = reg.load_dir(dir.path());
    let took = started.elapsed();
    let r = reason(&s, "init_hangs");
    assert!(r.contains("the probe process timed out after 1 s"), "{r}");
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(20),
        "{took:?}"
    );
    // The probe was killed, not left behind.
    let left: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains("birdbone-plugin-probe") && c.contains("plugin_init_hangs"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn the_copy_that_was_probed_is_the_one_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let src = plugin_file("birdbone_plugin_layerwise");
    let so = fresh_copy(&src, dir.path(), "liblayerwise-swapped.so");
    let good = dir.path().join("good-bytes");
    std::fs::copy(&so, &good).unwrap();
    let garbage = dir.path().join("garbage");
    std::fs::write(&garbage, b"not a plugin").unwrap();
    let log = dir.path().join("probe.log");
    // A probe that, while the private copy is checked, replaces the original with garbage, and
    // notes which file it was given and the modes of it and its folder.
    let script = dir.path().join("probe-swaps.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ncp '{}' '{}'\necho \"$1 $(stat -c %a \"$(dirname \"$1\")\") $(stat -c %a \"$1\")\" > '{}'\nexec '{}' \"$1\"\n",
            garbage.display(),
            so.display(),
            log.display(),
            probe_binary().display()
        ),
    )
    .unwrap();
    chmod(&script, 0o700);
    let (reg, s) = load_alone(
        &so,
        TrustPolicy {
            probe: ProbeChoice::Binary(script.clone()),
            ..policy()
        },
    );
    assert!(s.rejected.is_empty(), "{:?}", s.rejected);
    assert_eq!(std::fs::read(&so).unwrap(), b"not a plugin");
    let plugin = &reg.plugins()[0];
    assert_eq!(plugin.path, so);
    assert_eq!(plugin.sha256, sha256sum(&good), "the bytes checked");
    let logged = std::fs::read_to_string(&log).unwrap();
    let fields: Vec<&str> = logged.split_whitespace().collect();
    assert_eq!(
        fields,
        [&*plugin.loaded_from.to_string_lossy(), "700", "500"],
        "the probe was given the private copy, in a folder of mode 0700"
    );
    assert!(plugin.loaded_from.starts_with(std::env::temp_dir()));
    // The library mapped in this process is that copy (removed from disk once loaded).
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    assert!(maps.contains(&*plugin.loaded_from.to_string_lossy()));
    assert!(!plugin.loaded_from.exists());
    assert!(!plugin.loaded_from.parent().unwrap().exists());
    assert!(reg
        .create_strategy("layerwise", &Default::default(), host_ops())
        .is_ok());

    // A private copy changed while it was probed is refused.
    let so = fresh_copy(&src, dir.path(), "liblayerwise-tampered.so");
    let script = dir.path().join("probe-tampers.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nchmod u+w \"$1\"\nprintf tampered >> \"$1\"\nexec '{}' \"$1\"\n",
            probe_binary().display()
        ),
    )
    .unwrap();
    chmod(&script, 0o700);
    let (reg, s) = load_alone(
        &so,
        TrustPolicy {
            probe: ProbeChoice::Binary(script),
            ..policy()
        },
    );
    let r = reason(&s, "liblayerwise-tampered.so");
    assert!(
        r.contains("its private copy changed after it was probed"),
        "{r}"
    );
    assert!(reg.plugins().is_empty());
}

#[test]
fn without_a_probe_files_load_unprobed_unless_a_probe_is_required() {
    let dir = tempfile::tempdir().unwrap();
    let so = fresh_copy(&plugin_file("birdbone_plugin_ria"), dir.path(), "libria.so");
    let missing = dir.path().join("no-such-probe");
    let (reg, s) = load_alone(
        &so,
        TrustPolicy {
            probe: ProbeChoice::Binary(missing.clone()),
            require_probe: true,
            ..TrustPolicy::default()
        },
    );
    let r = reason(&s, "libria.so");
    assert!(
        r.contains(&format!(
            "the plugin probe {} does not exist",
            missing.display()
        )) && r.contains("the trust policy requires a probe"),
        "{r}"
    );
    assert!(reg.plugins().is_empty());
    let (reg, s) = load_alone(
        &so,
        TrustPolicy {
            probe: ProbeChoice::Binary(missing),
            require_probe: false,
            ..TrustPolicy::default()
        },
    );
    assert!(s.rejected.is_empty(), "{:?}", s.rejected);
    assert!(reg.component("ria").is_some());
}

#[test]
fn a_copy_of_a_libtorch_library_is_refused_and_the_host_lives_on() {
    let _ = tch::Tensor::zeros([1], (tch::Kind::Float, tch::Device::Cpu));
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let c10 = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.ends_with("/libc10.so"))
        .expect("libtorch's libc10.so is mapped in this process");
    let dir = tempfile::tempdir().unwrap();
    let so = fresh_copy(Path::new(c10), dir.path(), "libc10-copy.so");
    let (reg, s) = load_alone(&so, policy());
    let r = reason(&s, "libc10-copy.so");
    assert!(
        r.contains("not a Birdbone plugin") || r.contains("not a loadable shared library"),
        "{r}"
    );
    assert!(reg.plugins().is_empty());
}

#[test]
fn the_default_plugin_folders_hold_no_test_fixtures() {
    let stray: Vec<_> = std::fs::read_dir(build_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.contains("fixture") && n.ends_with(".so"))
        .collect();
    assert!(
        stray.is_empty(),
        "fixture plugins beside the executables: {stray:?}"
    );
    let plugins = |allowlist: Option<&Path>| -> Value {
        let mut cmd = Command::new(build_dir().join("birdbone"));
        cmd.args(["plugins", "--json"])
            .env_remove("BIRDBONE_PLUGIN_PATH")
            .env_remove(birdbone_host::trust::ALLOW_INSECURE_ENV)
            .env_remove(birdbone_host::trust::ALLOWLIST_ENV);
        if let Some(a) = allowlist {
            cmd.env(birdbone_host::trust::ALLOWLIST_ENV, a);
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{out:?}");
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let v = plugins(None);
    assert_eq!(v["folders"][0].as_str(), build_dir().to_str());
    assert_eq!(v["rejected"], serde_json::json!([]), "{}", v["rejected"]);
    let components = v["components"].as_array().unwrap();
    assert_eq!(components.len(), 13);
    assert!(components
        .iter()
        .all(|c| !c["path"].as_str().unwrap().contains("fixture")));

    // The allowlist of the environment: an empty one admits nothing, and says why.
    let empty = tempfile::NamedTempFile::new().unwrap();
    let v = plugins(Some(empty.path()));
    assert_eq!(v["components"], serde_json::json!([]));
    let rejected = v["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), 9);
    assert!(rejected.iter().all(|r| r["reason"]
        .as_str()
        .unwrap()
        .contains("is not in the allowlist")));
}
