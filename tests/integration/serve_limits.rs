//! Every client bounded: the example server's limits (body size, tokens, connections, idle
//! connections, typed requests) and its admin token, each a regression test of a finding
//! against the hand-written TCP server it replaced. Bounds on time are generous: nothing here
//! times the server, it only waits for it.

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use birdbone_example_serve::{client::Client, start, Limits};
use birdbone_tests::*;
use serde_json::json;

use crate::serve::{config, generate, metric, TOKEN};

/// Retries `f` until it returns true, for up to two minutes.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let started = Instant::now();
    while !f() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "never: {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The error text of an answer, which must have `status`.
fn error(a: std::io::Result<birdbone_example_serve::client::Answer>, status: u16) -> String {
    let a = a.expect("an answer");
    assert_eq!(a.status, status, "{}", a.body);
    a.json()["error"].as_str().unwrap_or(&a.body).to_string()
}

#[test]
fn every_client_is_bounded_and_requests_are_typed() {
    let live = tempfile::tempdir().unwrap();
    let builtin = plugin_dir_with(&builtin_plugin_files());
    let mut cfg = config(live.path(), builtin.path());
    cfg.limits = Limits {
        max_body_bytes: 4096,
        max_new_tokens: 8,
        max_connections: 12,
        max_generations: 2,
        idle_time: Duration::from_secs(2),
        request_time: Duration::from_secs(300),
        ..Limits::default()
    };
    let server = start(cfg).unwrap();
    let c = Client::new(server.addr);
    assert_eq!(c.get("/healthz").unwrap().body, "ok\n");
    let g = generate(&c, "The capital of France is", 4);
    assert!(g["tokens"].as_u64().unwrap() <= 4 && !g["text"].as_str().unwrap().is_empty());

    // Typed requests: no field silently replaced by a default.
    let gen = |body: &str| c.send("POST", "/v1/generate", Some(body.as_bytes()));
    let big = json!({"prompt": "x".repeat(8000)}).to_string();
    assert!(error(gen(&big), 413).contains("length limit"));
    let e = error(gen(r#"{"prompt": "Hi", "bogus": 1}"#), 400);
    assert!(e.contains("unknown field `bogus`"), "{e}");
    let e = error(gen(r#"{"prompt": "Hi", "max_new_tokens": "4"}"#), 400);
    assert!(
        e.contains("max_new_tokens") && e.contains("invalid type: string"),
        "{e}"
    );
    let e = error(gen(r#"{"prompt": "Hi", "max_new_tokens": -1}"#), 400);
    assert!(e.contains("max_new_tokens"), "{e}");
    let e = error(gen(r#"{"prompt": 7}"#), 400);
    assert!(e.contains("prompt"), "{e}");
    assert!(error(gen(r#"{"max_new_tokens": 4}"#), 400).contains("missing field `prompt`"));
    assert!(error(gen("prompt=Hi"), 400).contains("not JSON"));
    assert!(error(gen(r#"{"prompt": "Hi", "max_new_tokens": 9}"#), 400).contains("limit of 8"));

    // The admin routes need the token; their requests are typed too.
    let reprune = json!({"scorer": "magnitude", "strategy": "global", "sparsity": 0.5});
    assert!(error(c.post("/v1/admin/reprune", &reprune), 401).contains("admin token"));
    assert!(error(
        c.with_token("wrong").post("/v1/admin/reprune", &reprune),
        401
    )
    .contains("admin token"));
    error(c.post("/v1/admin/undo", &json!({})), 401);
    error(c.post("/v1/admin/plugins/reload", &json!({})), 401);
    let admin = c.with_token(TOKEN);
    let e = error(
        admin.post("/v1/admin/reprune", &json!({"sparsity": "0.5"})),
        400,
    );
    assert!(
        e.contains("sparsity") && e.contains("invalid type: string"),
        "{e}"
    );
    let e = error(
        admin.post(
            "/v1/admin/reprune",
            &json!({"sparsity": 0.5, "sparsty": 0.6}),
        ),
        400,
    );
    assert!(e.contains("unknown field `sparsty`"), "{e}");
    let e = error(
        admin.post(
            "/v1/admin/reprune",
            &json!({"sparsity": 0.5, "scorer": {"name": "magnitude", "parms": {}}}),
        ),
        400,
    );
    assert!(e.contains("scorer") && e.contains("parms"), "{e}");
    let e = error(
        admin.post("/v1/admin/reprune", &json!({"sparsity": 1.5})),
        400,
    );
    assert!(e.contains("between 0 and 1"), "{e}");
    let e = error(
        admin.post(
            "/v1/admin/reprune",
            &json!({"sparsity": 0.5, "statistics": "live"}),
        ),
        400,
    );
    assert!(e.contains("statistics") && e.contains("warmup"), "{e}");
    let e = error(
        admin.post(
            "/v1/admin/reprune",
            &json!({"sparsity": 0.5, "statistics": "traffic"}),
        ),
        409,
    );
    assert!(e.contains("--record-activations"), "{e}");
    let e = error(
        admin.post(
            "/v1/admin/reprune",
            &json!({"scorer": "no-such-scorer", "sparsity": 0.5}),
        ),
        400,
    );
    assert!(e.contains("no-such-scorer"), "{e}");
    let e = error(
        admin.post(
            "/v1/admin/reprune",
            &json!({"scorer": {"name": "magnitude", "params": {"q": 1}}, "sparsity": 0.5}),
        ),
        400,
    );
    assert!(e.contains("unknown parameter 'q'"), "{e}");
    // None of those changed the model.
    assert_eq!(crate::serve::ok(c.get("/v1/status"))["epoch"], 0);

    // Idle connections starve no one, and are closed after the idle time.
    let mut idle: Vec<TcpStream> = (0..8)
        .map(|_| TcpStream::connect(server.addr).unwrap())
        .collect();
    let g = generate(&c, "The capital of France is", 4);
    assert!(!g["text"].as_str().unwrap().is_empty());
    for s in &mut idle {
        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        let mut buf = [0u8; 64];
        match s.read(&mut buf) {
            Ok(_) => {} // closed (0), or an error answer then closed
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("an idle connection was not closed: {e}"),
        }
    }

    // At the connection limit, one more connection is answered 503 and closed; once the
    // holders go, connections are served again.
    let holders: Vec<TcpStream> = (0..12)
        .map(|_| {
            let mut s = TcpStream::connect(server.addr).unwrap();
            // A head whose body never comes: the connection is busy, not idle.
            s.write_all(b"POST /v1/generate HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n")
                .unwrap();
            s
        })
        .collect();
    eventually("a connection over the limit is refused", || {
        c.get("/healthz").is_ok_and(|a| a.status == 503)
    });
    drop(holders);
    eventually("connections are served again", || {
        c.get("/healthz").is_ok_and(|a| a.status == 200)
    });
    assert!(metric(&c, "birdbone_connections_refused_total") >= 1.0);
    let m = c.get("/metrics").unwrap().body;
    assert!(
        m.contains("birdbone_http_requests_total{route=\"/v1/generate\",code=\"413\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("birdbone_http_requests_total{route=\"/v1/admin/reprune\",code=\"401\"} 2"),
        "{m}"
    );
    server.shutdown();
}

#[test]
fn admin_endpoints_are_disabled_without_a_token() {
    let live = tempfile::tempdir().unwrap();
    let builtin = plugin_dir_with(&builtin_plugin_files());
    let mut cfg = config(live.path(), builtin.path());
    cfg.admin_token = None;
    let server = start(cfg).unwrap();
    let c = Client::new(server.addr).with_token(TOKEN);
    for path in [
        "/v1/admin/reprune",
        "/v1/admin/undo",
        "/v1/admin/plugins/reload",
    ] {
        let e = error(c.post(path, &json!({"sparsity": 0.5})), 403);
        assert!(e.contains("disabled"), "{e}");
    }
    assert_eq!(crate::serve::ok(c.get("/v1/status"))["admin"], false);
    assert!(!generate(&c, "The capital of France is", 2)["text"]
        .as_str()
        .unwrap()
        .is_empty());
    server.shutdown();
}
