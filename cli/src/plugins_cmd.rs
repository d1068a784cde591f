use birdbone_host::Role;
use birdbone_host_api::{Granularity, InputSet};
use birdbone_tch::PluginRegistry;
use serde_json::json;

use crate::common::PluginArgs;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    plugins: PluginArgs,
    /// Print JSON (docs/cli.md) instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let dirs = a.plugins.folders();
    let reg = PluginRegistry::discover(&dirs);
    let secs = started.elapsed().as_secs_f64();
    if a.json {
        let comps: Vec<_> = reg
            .components()
            .map(|c| {
                let caps = &c.info.capabilities;
                json!({
                    "name": c.info.name.as_str(),
                    "kind": Role::of(c.info).name(),
                    "description": c.info.description.as_str(),
                    "plugin": c.plugin.manifest.name.as_str(),
                    "plugin_version": c.plugin.manifest.version.as_str(),
                    "abi": c.plugin.manifest.abi.to_string(),
                    "path": c.plugin.path,
                    "params": c.info.params.iter().map(|p| json!({
                        "name": p.name.as_str(), "type": format!("{:?}", p.kind).to_lowercase(),
                        "default": p.default.to_string(), "doc": p.doc.as_str(),
                    })).collect::<Vec<_>>(),
                    "devices": devices(caps.devices.0),
                    "needs_activation_stats": caps.inputs.0 & 1 != 0,
                    "needs_gradients": caps.inputs.0 & 2 != 0,
                    "stateful": caps.stateful,
                    "granularity": caps.granularity.members().iter().map(|g| format!("{g:?}")).collect::<Vec<_>>(),
                    "requires": caps.requires.iter().map(|r| r.as_str()).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(
                &json!({"command": "plugins", "folders": dirs, "components": comps, "rejected": reg.rejected(), "superseded": reg.upgrades(), "load_seconds": secs})
            )?
        );
        return Ok(());
    }
    for (role, title) in [
        (Role::Scorer, "scorers"),
        (Role::Strategy, "strategies"),
        (Role::Allocator, "allocators"),
    ] {
        println!("{title}:");
        for c in reg.components().filter(|c| Role::of(c.info) == role) {
            let caps = &c.info.capabilities;
            let mut needs = vec![];
            for (input, what) in [
                (InputSet::ACTIVATION_STATS, "activation statistics"),
                (InputSet::GRADIENTS, "gradients"),
                (InputSet::HESSIAN, "Hessian statistics"),
                (InputSet::LOAD, "layer load"),
            ] {
                if caps.inputs.contains(input) {
                    needs.push(what);
                }
            }
            let gran: Vec<String> = caps.granularity.members().iter().map(granularity).collect();
            println!(
                "  {:<20} {}",
                c.info.name.as_str(),
                c.info.description.as_str()
            );
            println!(
                "  {:<20} plugin {} {} (ABI {}) from {}",
                "",
                c.plugin.manifest.name.as_str(),
                c.plugin.manifest.version.as_str(),
                c.plugin.manifest.abi,
                c.plugin.path.display()
            );
            println!(
                "  {:<20} devices: {}; granularity: {}; needs: {}{}",
                "",
                devices(caps.devices.0).join(", "),
                gran.join(", "),
                if needs.is_empty() {
                    "the weight only".to_string()
                } else {
                    needs.join(", ")
                },
                if caps.stateful {
                    "; keeps state across calls"
                } else {
                    ""
                }
            );
            for p in c.info.params.iter() {
                println!(
                    "  {:<20}   --param {}=<{:?}> (default {}): {}",
                    "",
                    p.name.as_str(),
                    p.kind,
                    p.default,
                    p.doc.as_str()
                );
            }
        }
    }
    if !reg.upgrades().is_empty() {
        // Both files offer the component; the newer version is the one listed above.
        println!("superseded:");
        for u in reg.upgrades() {
            println!(
                "  {} {} from {} (replaced by {} from {})",
                u.component,
                u.from_version,
                u.from.display(),
                u.to_version,
                u.to.display()
            );
        }
    }
    if !reg.rejected().is_empty() {
        println!("rejected:");
        for r in reg.rejected() {
            println!("  {}: {}", r.path.display(), r.reason);
        }
    }
    println!(
        "({} plugins loaded in {:.1} ms from {})",
        reg.plugins().len(),
        secs * 1e3,
        dirs.iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

fn devices(bits: u32) -> Vec<&'static str> {
    let mut v = vec![];
    if bits & 1 != 0 {
        v.push("cpu");
    }
    if bits & 2 != 0 {
        v.push("cuda");
    }
    v
}

fn granularity(g: &Granularity) -> String {
    match g {
        Granularity::Unstructured => "unstructured",
        Granularity::NM => "N:M",
        Granularity::Rows => "rows",
        Granularity::Columns => "columns",
    }
    .to_string()
}
