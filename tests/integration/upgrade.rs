//! Live upgrades of plugin components: a newer version of a component replaces the loaded one
//! for passes created afterwards, while a pruner created before keeps the version it started
//! with (its library stays loaded); an equal or older version, or a change of kind, is refused
//! with a reason. The two versions are one fixture source built twice
//! (tests/fixtures/plugin-versioned-v1 and -v2).

use std::collections::BTreeMap;

use birdbone_tch::{PassConfig, PassInputs, PluginRegistry, Pruner};
use birdbone_tests::*;
use tch::{Device, Kind, Tensor};

fn weights(seed: i64) -> Vec<(String, Tensor)> {
    tch::manual_seed(seed);
    (0..2)
        .map(|i| {
            (
                format!("model.layers.{i}.mlp.up_proj.weight"),
                Tensor::randn([16, 32], (Kind::Float, Device::Cpu)),
            )
        })
        .collect()
}

/// The share of weights a pass with `strategy` prunes (2:4 from version 1, 1:4 from 2).
fn pruned_share(pruner: &mut Pruner, seed: i64) -> f64 {
    let model = weights(seed);
    let (report, _) = pruner
        .run(&model, &PassConfig::default(), PassInputs::default())
        .unwrap();
    report.pruned as f64 / report.total as f64
}

fn pruner(reg: &PluginRegistry) -> Pruner {
    let none = BTreeMap::new();
    Pruner::new(reg, "magnitude", &none, "versioned-nm", &none).unwrap()
}

#[test]
fn a_newer_version_replaces_a_component_for_later_passes_and_older_ones_are_refused() {
    let v1 = plugin_file("birdbone_fixture_plugin_versioned_v1");
    let v2 = plugin_file("birdbone_fixture_plugin_versioned_v2");
    let live = tempfile::tempdir().unwrap();
    std::fs::copy(&v1, live.path().join("libversioned_a.so")).unwrap();
    let mut reg = PluginRegistry::new();
    reg.load_paths(&[plugin_file("birdbone_plugin_magnitude")]);
    let s = reg.load_dir(live.path());
    assert_eq!((s.loaded.len(), s.rejected.len()), (1, 0), "{s:?}");
    assert_eq!(reg.version_of("versioned-nm"), Some("1.0.0"));

    // A pass in flight: its pruner holds version 1's components.
    let mut started = pruner(&reg);
    assert_eq!(pruned_share(&mut started, 1), 0.5, "version 1 prunes 2:4");

    // Version 2 dropped in and scanned: `versioned-nm` is replaced; `versioned-kind`, a
    // scorer in version 1 and a strategy in version 2, is not.
    std::fs::copy(&v2, live.path().join("libversioned_b.so")).unwrap();
    let s = reg.load_dir(live.path());
    assert_eq!(s.loaded.len(), 1, "{s:?}");
    assert_eq!(s.upgraded.len(), 1, "{s:?}");
    let u = &s.upgraded[0];
    assert_eq!(
        (
            u.component.as_str(),
            u.from_version.as_str(),
            u.to_version.as_str()
        ),
        ("versioned-nm", "1.0.0", "2.0.0")
    );
    assert!(u.to.ends_with("libversioned_b.so"), "{u:?}");
    assert_eq!(s.rejected.len(), 1, "{s:?}");
    let r = &s.rejected[0].reason;
    assert!(
        r.contains("component 'versioned-kind' is already offered by")
            && r.contains("as a scorer")
            && r.contains("offers it as a strategy")
            && r.contains("must keep the kind"),
        "{r}"
    );
    assert_eq!(reg.version_of("versioned-nm"), Some("2.0.0"));
    assert_eq!(reg.version_of("versioned-kind"), Some("1.0.0"));
    assert_eq!(reg.upgrades().len(), 1);

    // Later passes use version 2; the pruner created before still runs version 1.
    assert_eq!(
        pruned_share(&mut pruner(&reg), 2),
        0.75,
        "version 2 prunes 1:4"
    );
    assert_eq!(
        pruned_share(&mut started, 3),
        0.5,
        "the earlier pruner keeps version 1"
    );

    // Version 1 again (an older version), under a third name: refused, version 2 stays.
    std::fs::copy(&v1, live.path().join("libversioned_c.so")).unwrap();
    let s = reg.load_dir(live.path());
    assert!(s.upgraded.is_empty(), "{s:?}");
    let older = s
        .rejected
        .iter()
        .find(|r| r.reason.contains("'versioned-nm'"))
        .expect("version 1 refused");
    assert!(
        older.reason.contains("is already offered by")
            && older.reason.contains("(version 2.0.0)")
            && older
                .reason
                .contains("offers version 1.0.0, which is not newer"),
        "{}",
        older.reason
    );
    assert_eq!(reg.version_of("versioned-nm"), Some("2.0.0"));

    // The same version again: refused too. A rescan with nothing new does nothing.
    std::fs::copy(&v2, live.path().join("libversioned_d.so")).unwrap();
    let s = reg.load_dir(live.path());
    assert!(s.rejected.iter().any(|r| r
        .reason
        .contains("offers version 2.0.0, which is not newer")));
    let s = reg.load_dir(live.path());
    assert!(s.loaded.is_empty() && s.rejected.is_empty() && s.upgraded.is_empty());
}

#[test]
fn a_plugin_file_replaced_in_place_is_upgraded_on_the_next_scan() {
    let live = tempfile::tempdir().unwrap();
    let file = live.path().join("libversioned.so");
    std::fs::copy(plugin_file("birdbone_fixture_plugin_versioned_v1"), &file).unwrap();
    let mut reg = PluginRegistry::new();
    reg.load_paths(&[plugin_file("birdbone_plugin_magnitude")]);
    reg.load_dir(live.path());
    assert_eq!(reg.version_of("versioned-nm"), Some("1.0.0"));
    // Written over (what `cp new.so live/libversioned.so` does): the next scan sees it.
    std::fs::copy(plugin_file("birdbone_fixture_plugin_versioned_v2"), &file).unwrap();
    let s = reg.load_dir(live.path());
    assert_eq!(s.upgraded.len(), 1, "{s:?}");
    assert_eq!(reg.version_of("versioned-nm"), Some("2.0.0"));
    assert_eq!(pruned_share(&mut pruner(&reg), 4), 0.75);
    // Touched without a change: nothing is loaded or refused.
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, bytes).unwrap();
    let s = reg.load_dir(live.path());
    assert!(s.loaded.is_empty() && s.rejected.is_empty(), "{s:?}");
}
