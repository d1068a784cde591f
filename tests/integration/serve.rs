//! The example server (examples/serve) over HTTP on loopback: live plugin reloads (a library
//! that aborts while loading refused, a component upgraded to a newer version), traffic
//! statistics, a graceful shutdown, and the soak: clients generating while re-prunes and undos
//! commit, every answer from one version of the weights. The limits and the admin token are in
//! `serve_limits`.

use std::{
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use birdbone_example_serve::{
    client::{Answer, Client},
    start, Limits, ServeConfig, TrustPolicy,
};
use birdbone_host::ProbeChoice;
use birdbone_tests::*;
use serde_json::{json, Value};

pub const TOKEN: &str = "test-token-5f1c";

/// A server on loopback: the real model, dense (no warm-up pass), every trust check on, the
/// admin token set.
pub fn config(live: &Path, builtin: &Path) -> ServeConfig {
    ServeConfig {
        model: real_model_dir().to_string_lossy().into(),
        plugins: live.to_path_buf(),
        extra_plugins: vec![builtin.to_path_buf()],
        trust: Some(TrustPolicy {
            probe: ProbeChoice::Binary(probe_binary()),
            require_probe: true,
            ..TrustPolicy::default()
        }),
        addr: "127.0.0.1:0".parse().unwrap(),
        calibration_text: real_text("c4.utf8"),
        calibration: (1, 64),
        warmup: None,
        device: tch::Device::Cpu,
        kind: tch::Kind::Float,
        limits: Limits {
            request_time: Duration::from_secs(300),
            ..Limits::default()
        },
        admin_token: Some(TOKEN.into()),
        record_activations: 0,
        handle_signals: false,
    }
}

pub fn ok(a: std::io::Result<Answer>) -> Value {
    let a = a.expect("an answer");
    assert_eq!(a.status, 200, "{}", a.body);
    a.json()
}

pub fn generate(c: &Client, prompt: &str, max_new: u32) -> Value {
    ok(c.post(
        "/v1/generate",
        &json!({"prompt": prompt, "max_new_tokens": max_new}),
    ))
}

/// The value of an unlabelled metric.
pub fn metric(c: &Client, name: &str) -> f64 {
    let m = c.get("/metrics").unwrap().body;
    m.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in\n{m}"))
        .parse()
        .unwrap()
}

fn share(r: &Value) -> f64 {
    r["pruned"].as_f64().unwrap() / r["total"].as_f64().unwrap()
}

#[test]
fn plugins_reload_live_a_bad_library_is_refused_and_a_newer_version_replaces_the_old() {
    let live = tempfile::tempdir().unwrap();
    let builtin = plugin_dir_with(&builtin_plugin_files());
    let server = start(config(live.path(), builtin.path())).unwrap();
    let c = Client::new(server.addr);
    let admin = c.with_token(TOKEN);

    // A library whose constructor aborts, dropped in and reloaded: refused, and the server
    // (which would have died loading it) keeps serving.
    std::fs::copy(
        plugin_file("birdbone_fixture_plugin_init_aborts"),
        live.path().join("libbad.so"),
    )
    .unwrap();
    let r = ok(admin.post("/v1/admin/plugins/reload", &json!({})));
    assert_eq!(r["loaded"].as_array().unwrap().len(), 0, "{r}");
    let reason = r["rejected"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("killed by signal"), "{r}");
    assert!(!generate(&c, "The capital of France is", 3)["text"]
        .as_str()
        .unwrap()
        .is_empty());

    // Version 1 of a strategy, then version 2 of it: later re-prunes use version 2.
    std::fs::copy(
        plugin_file("birdbone_fixture_plugin_versioned_v1"),
        live.path().join("libversioned_1.so"),
    )
    .unwrap();
    let r = ok(admin.post("/v1/admin/plugins/reload", &json!({})));
    assert_eq!(r["loaded"].as_array().unwrap().len(), 1, "{r}");
    let nm = json!({"strategy": "versioned-nm", "sparsity": 0.5});
    let r = ok(admin.post("/v1/admin/reprune", &nm));
    assert_eq!(
        (share(&r), r["strategy_version"].as_str()),
        (0.5, Some("1.0.0")),
        "{r}"
    );
    std::fs::copy(
        plugin_file("birdbone_fixture_plugin_versioned_v2"),
        live.path().join("libversioned_2.so"),
    )
    .unwrap();
    let r = ok(admin.post("/v1/admin/plugins/reload", &json!({})));
    assert_eq!(r["upgraded"][0]["component"], "versioned-nm", "{r}");
    assert_eq!(r["upgraded"][0]["to_version"], "2.0.0", "{r}");
    assert!(
        r["rejected"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("must keep the kind"),
        "{r}"
    );
    assert_eq!(ok(admin.post("/v1/admin/undo", &json!({})))["undone"], true);
    let r = ok(admin.post("/v1/admin/reprune", &nm));
    assert_eq!(
        (share(&r), r["strategy_version"].as_str()),
        (0.75, Some("2.0.0")),
        "{r}"
    );
    let status = ok(c.get("/v1/status"));
    assert!(status["components"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["name"] == "versioned-nm" && c["version"] == "2.0.0"));
    assert!(
        (status["sparsity"].as_f64().unwrap() - 0.75).abs() < 1e-4,
        "{status}"
    );
    assert!(!generate(&c, "The capital of France is", 3)["text"]
        .as_str()
        .unwrap()
        .is_empty());
    server.shutdown();
}

#[test]
fn traffic_statistics_feed_a_reprune_and_shutdown_lets_requests_finish() {
    let live = tempfile::tempdir().unwrap();
    let builtin = plugin_dir_with(&builtin_plugin_files());
    let mut cfg = config(live.path(), builtin.path());
    cfg.record_activations = 2;
    let server = start(cfg).unwrap();
    let c = Client::new(server.addr);
    let admin = c.with_token(TOKEN);
    // 1 request in 2 is recorded: the first and the third.
    let recorded: Vec<bool> = (0..3)
        .map(|i| {
            generate(&c, &format!("Question {i}: the capital of France is"), 4)["recorded"] == true
        })
        .collect();
    assert_eq!(recorded, [true, false, true]);
    assert_eq!(metric(&c, "birdbone_traffic_recorded_requests_total"), 2.0);
    assert!(metric(&c, "birdbone_traffic_recorded_tokens_total") > 8.0);
    // Its cost per token, once both kinds of request were seen (an estimate: any sign).
    assert!(metric(&c, "birdbone_traffic_record_seconds_per_token").is_finite());
    let r = ok(admin.post(
        "/v1/admin/reprune",
        &json!({"scorer": "wanda", "strategy": {"name": "layerwise", "params": {"scope": "row"}},
                "sparsity": 0.3, "statistics": "traffic"}),
    ));
    assert_eq!(r["statistics"], "traffic", "{r}");
    assert_eq!(r["traffic"]["requests"], 2, "{r}");
    assert!((r["sparsity"].as_f64().unwrap() - 0.3).abs() < 1e-3, "{r}");

    // Shutdown while a generation runs: it finishes and is answered.
    let mut answered = None;
    for _ in 0..5 {
        let long = {
            let c = c.clone();
            std::thread::spawn(move || {
                c.post(
                    "/v1/generate",
                    &json!({"prompt": "Once upon a time", "max_new_tokens": 48}),
                )
            })
        };
        let started = Instant::now();
        while !long.is_finished()
            && metric(&c, "birdbone_generations_in_flight") < 1.0
            && started.elapsed() < Duration::from_secs(120)
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        if !long.is_finished() {
            answered = Some(long);
            break;
        }
        long.join().unwrap().unwrap();
    }
    let long = answered.expect("a generation in flight to shut down under");
    let addr = server.addr;
    server.shutdown();
    let a = long.join().unwrap().unwrap();
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a.json()["tokens"].as_u64().unwrap() > 0);
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "still listening"
    );
}

#[test]
fn soak_every_answer_comes_from_one_version_of_the_weights() {
    let live = tempfile::tempdir().unwrap();
    let builtin = plugin_dir_with(&builtin_plugin_files());
    let server = start(config(live.path(), builtin.path())).unwrap();
    let c = Client::new(server.addr);
    let admin = c.with_token(TOKEN);
    let prompt = "The capital of France is";
    let answer = || {
        generate(&c, prompt, 6)["text"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let a = json!({"scorer": "magnitude", "strategy": "global", "sparsity": 0.3});
    let b = json!({"scorer": "wanda", "strategy": {"name": "layerwise", "params": {"scope": "row"}}, "sparsity": 0.6});
    let reprune = |r: &Value| ok(admin.post("/v1/admin/reprune", r));
    let undo = || {
        let u = ok(admin.post("/v1/admin/undo", &json!({})));
        assert_eq!(u["undone"], true, "{u}");
    };
    // The greedy answer in every state the soak passes through: dense, A, A then B.
    let dense = answer();
    reprune(&a);
    let after_a = answer();
    reprune(&b);
    let after_b = answer();
    undo();
    assert_eq!(answer(), after_a, "undo restores A's answer");
    undo();
    assert_eq!(answer(), dense, "undo restores the dense answer");
    assert_ne!(
        dense, after_b,
        "the states must answer differently for the check to mean anything"
    );
    let states = [dense, after_a, after_b];

    let done = AtomicBool::new(false);
    let (answers, ops) = std::thread::scope(|s| {
        let clients: Vec<_> = (0..4)
            .map(|_| {
                let (c, done) = (c.clone(), &done);
                s.spawn(move || {
                    let mut got = Vec::new();
                    while got.len() < 2 || !done.load(Ordering::SeqCst) {
                        got.push(c.post(
                            "/v1/generate",
                            &json!({"prompt": prompt, "max_new_tokens": 6}),
                        ));
                    }
                    got
                })
            })
            .collect();
        // K = 6 commits while they generate: A, B, undo, undo, A, undo.
        let ops = [
            admin.post("/v1/admin/reprune", &a),
            admin.post("/v1/admin/reprune", &b),
            admin.post("/v1/admin/undo", &json!({})),
            admin.post("/v1/admin/undo", &json!({})),
            admin.post("/v1/admin/reprune", &a),
            admin.post("/v1/admin/undo", &json!({})),
        ];
        done.store(true, Ordering::SeqCst);
        let answers: Vec<_> = clients
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        (answers, ops)
    });
    for op in ops {
        ok(op);
    }
    let mut mixed = 0;
    for a in &answers {
        let a = a.as_ref().expect("no request lost");
        assert_eq!(a.status, 200, "no request failed: {}", a.body);
        let text = a.json()["text"].as_str().unwrap().to_string();
        mixed += usize::from(!states.contains(&text));
    }
    assert_eq!(mixed, 0, "answers mixing two versions of the weights");
    assert!(answers.len() >= 8);
    assert_eq!(metric(&c, "birdbone_commits_total"), 5.0);
    assert_eq!(metric(&c, "birdbone_undos_total"), 5.0);
    eprintln!(
        "soak: {} answers, {} restarts, longest read-lock wait {:.3} s, longest commit {:.3} s",
        answers.len(),
        metric(&c, "birdbone_generation_restarts_total"),
        metric(&c, "birdbone_read_lock_wait_seconds_max"),
        metric(&c, "birdbone_write_hold_seconds_max"),
    );
    server.shutdown();
}
