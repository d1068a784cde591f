use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use birdbone_example_serve::{start, Client, ServeConfig};
use birdbone_tests::*;
use serde_json::json;

#[test]
fn the_server_keeps_answering_through_a_live_reprune_with_a_plugin_dropped_in() {
    let live = tempfile::tempdir().unwrap();
    let builtin = plugin_dir_with(&builtin_plugin_files());
    let warmup = Some((
        "wanda".to_string(),
        "layerwise".to_string(),
        BTreeMap::from([("scope".to_string(), "row".to_string())]),
        0.5,
    ));
    let server = start(ServeConfig {
        model: real_model_dir().to_string_lossy().into(),
        plugins: live.path().to_path_buf(),
        extra_plugins: vec![builtin.path().to_path_buf()],
        addr: "127.0.0.1:0".parse::<SocketAddr>().unwrap(),
        threads: 4,
        calibration_text: real_text("c4.utf8"),
        calibration: (2, 256),
        warmup,
        device: tch::Device::Cpu,
        kind: tch::Kind::Float,
    })
    .unwrap();
    assert!(
        (server.warmup.sparsity - 0.5).abs() < 1e-9,
        "warm-up pruned to {}",
        server.warmup.sparsity
    );
    let addr = server.addr;

    // Clients generate while the operator drops a new plugin in and asks for a re-prune.
    let clients: Vec<_> = (0..4)
        .map(|c| {
            std::thread::spawn(move || {
                let mut client = Client::connect(addr).unwrap();
                (0..3)
                    .map(|i| client.call(&json!({"op": "generate", "prompt": format!("Question {c}.{i}: the capital of France is"), "max_new": 6})).unwrap())
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));

    // Build the third-party plugin (a no-op when it is up to date) and drop it into the live
    // folder under a new name.
    let manifest = workspace_root().join("examples/third-party-plugin/Cargo.toml");
    let status = std::process::Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--manifest-path"])
        .arg(&manifest)
        .status()
        .unwrap();
    assert!(status.success(), "building the third-party plugin failed");
    let built = workspace_root()
        .join("examples/third-party-plugin/target/debug/libbirdbone_example_relative_magnitude.so");
    std::fs::copy(&built, live.path().join("librelative_magnitude_v1.so")).unwrap();

    let mut operator = Client::connect(addr).unwrap();
    let r = operator.call(&json!({"op": "reprune", "scorer": "relative-magnitude", "strategy": "global", "sparsity": 0.6})).unwrap();
    assert_eq!(r["ok"], true, "{r}");
    assert!(
        r["scorer"]
            .as_str()
            .unwrap()
            .starts_with("relative-magnitude"),
        "{r}"
    );
    assert_eq!(r["new_plugins"].as_array().unwrap().len(), 1, "{r}");
    let total = r["total"].as_u64().unwrap();
    assert_eq!(
        r["pruned"].as_u64().unwrap(),
        (0.6 * total as f64).round() as u64,
        "{r}"
    );

    let answers: Vec<serde_json::Value> = clients
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    assert_eq!(answers.len(), 12, "every request answered");
    for a in &answers {
        assert_eq!(a["ok"], true, "{a}");
        assert!(!a["text"].as_str().unwrap().is_empty(), "{a}");
    }
    let status = operator.call(&json!({"op": "status"})).unwrap();
    assert!(
        (status["sparsity"].as_f64().unwrap() - 0.6).abs() < 1e-9,
        "{status}"
    );
    assert!(status["components"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c == "relative-magnitude"));
    // A bad request gets an error answer, and the connection stays usable.
    let bad = operator
        .call(&json!({"op": "reprune", "scorer": "no-such-scorer"}))
        .unwrap();
    assert_eq!(bad["ok"], false);
    assert!(bad["error"].as_str().unwrap().contains("no-such-scorer"));
    assert_eq!(operator.call(&json!({"op": "status"})).unwrap()["ok"], true);
    // Taking passes back, newest first: the re-prune, then the warm-up; then nothing is left.
    let u = operator.call(&json!({"op": "undo"})).unwrap();
    assert_eq!(u["undone"], true, "{u}");
    assert!((u["sparsity"].as_f64().unwrap() - 0.5).abs() < 1e-9, "{u}");
    let u = operator.call(&json!({"op": "undo"})).unwrap();
    assert_eq!(
        (u["undone"].as_bool(), u["undoable"].as_u64()),
        (Some(true), Some(0)),
        "{u}"
    );
    assert!(u["sparsity"].as_f64().unwrap() < 0.01, "dense again: {u}");
    assert_eq!(
        operator.call(&json!({"op": "undo"})).unwrap()["undone"],
        false
    );
    server.shutdown();
}
