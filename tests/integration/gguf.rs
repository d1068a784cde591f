use birdbone_gguf::{import_llama, GgufFile};
use birdbone_tests::*;

#[test]
fn the_real_checkpoint_imports_with_its_architecture() {
    let f = GgufFile::open(&real_gguf()).unwrap();
    assert_eq!(
        f.get("general.architecture").and_then(|v| v.as_str()),
        Some("llama")
    );
    let dir = tempfile::tempdir().unwrap();
    let s = import_llama(&real_gguf(), dir.path()).unwrap();
    let c = &s.config;
    assert_eq!(
        (c["num_hidden_layers"].as_u64(), c["hidden_size"].as_u64()),
        (Some(30), Some(576))
    );
    assert_eq!(
        (
            c["num_attention_heads"].as_u64(),
            c["num_key_value_heads"].as_u64()
        ),
        (Some(9), Some(3))
    );
    assert_eq!(
        (c["vocab_size"].as_u64(), c["rope_theta"].as_f64()),
        (Some(49152), Some(100000.0))
    );
    assert_eq!(c["tie_word_embeddings"].as_bool(), Some(true));
    // 30 blocks x 9 tensors + embeddings + final norm; tied, so no lm_head.
    assert_eq!(s.tensors, 30 * 9 + 2);
    assert_eq!(s.parameters, 134_515_008);
}

#[test]
fn the_rebuilt_tokenizer_round_trips_real_text() {
    let tok = tokenizers::Tokenizer::from_file(real_model_dir().join("tokenizer.json")).unwrap();
    let text = std::fs::read_to_string(real_text("wiki.utf8")).unwrap();
    let sample: String = text.chars().take(300_000).collect();
    let enc = tok.encode(sample.as_str(), false).unwrap();
    let ids = enc.get_ids();
    assert!(
        ids.len() > 50_000 && ids.len() < 150_000,
        "{} tokens for 300k characters",
        ids.len()
    );
    assert_eq!(tok.decode(ids, false).unwrap(), sample);
    // SmolLM splits digits one by one; common words are single tokens.
    assert_eq!(tok.encode("12345", false).unwrap().get_ids().len(), 5);
    assert_eq!(tok.encode(" the", false).unwrap().get_ids().len(), 1);
    // Special tokens survive as single ids.
    let chat = tok.encode("<|im_start|>user", false).unwrap();
    assert_eq!(chat.get_tokens()[0], "<|im_start|>");
}

#[test]
fn truncated_and_corrupt_files_are_clear_errors() {
    let bytes = std::fs::read(real_gguf()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (i, cut) in [3usize, 24, 1_000, 1_000_000, bytes.len() - 10]
        .into_iter()
        .enumerate()
    {
        let p = dir.path().join(format!("cut{i}.gguf"));
        std::fs::write(&p, &bytes[..cut]).unwrap();
        let e = GgufFile::open(&p)
            .err()
            .unwrap_or_else(|| panic!("a file cut at {cut} bytes opened"));
        let msg = e.to_string();
        assert!(
            msg.contains("truncated") && msg.contains(&format!("cut{i}.gguf")),
            "cut at {cut}: {msg}"
        );
        assert!(import_llama(&p, &dir.path().join("out")).is_err());
    }
    let p = dir.path().join("bad-magic.gguf");
    let mut b = bytes[..4096].to_vec();
    b[0] = b'X';
    std::fs::write(&p, b).unwrap();
    assert!(GgufFile::open(&p)
        .err()
        .unwrap()
        .to_string()
        .contains("not a GGUF file"));
}

#[test]
fn k_quants_dequantize_as_the_gguf_package_does() {
    let dir = tempfile::tempdir().unwrap();
    let (file, reference) = (dir.path().join("k.gguf"), dir.path().join("k.json"));
    let out = std::process::Command::new(python())
        .arg(workspace_root().join("scripts/gguf_kquants.py"))
        .arg(&file)
        .arg(&reference)
        .output()
        .expect("run the venv's python");
    assert!(
        out.status.success(),
        "gguf_kquants.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&reference).unwrap()).unwrap();
    let f = GgufFile::open(&file).unwrap();
    for name in ["q4_k", "q5_k", "q6_k"] {
        let t = f.tensor(name).unwrap_or_else(|| panic!("{name} missing"));
        let want: Vec<f32> = serde_json::from_value(reference[name]["values"].clone()).unwrap();
        let shape: Vec<u64> = serde_json::from_value(reference[name]["shape"].clone()).unwrap();
        assert_eq!(t.shape, shape, "{name}");
        let got = f.tensor_f32(t).unwrap();
        assert_eq!(got.len(), want.len(), "{name}");
        let worst = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs() / b.abs().max(1e-3))
            .fold(0f32, f32::max);
        assert!(worst < 1e-5, "{name}: largest relative difference {worst}");
        assert!(got.iter().any(|&x| x != 0.0), "{name} dequantized to zeros");
    }
}

/// Files of the kinds people download, built with the `gguf` package: a Llama with a
/// SentencePiece vocabulary (scores, byte fallback; Q8_0 and Q4_0 projections) and a Qwen2 with
/// biases and Qwen2's split. Imported, each gives transformers' token ids for real text, decodes
/// back to it, and the logits of a transformers model holding the file's weights.
#[test]
fn sentencepiece_llama_and_qwen2_files_import_as_transformers_reads_them() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(python())
        .arg(workspace_root().join("scripts/gguf_families.py"))
        .arg(dir.path())
        .arg(real_text("c4.utf8"))
        .arg(real_gguf())
        .arg(real_text("wiki.utf8"))
        .output()
        .expect("run the venv's python");
    assert!(
        out.status.success(),
        "gguf_families.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (name, arch) in [("llama-spm", "llama"), ("qwen2", "qwen2")] {
        let reference: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join(format!("{name}.json"))).unwrap(),
        )
        .unwrap();
        let folder = dir.path().join(name);
        let s = import_llama(&dir.path().join(format!("{name}.gguf")), &folder).unwrap();
        assert_eq!(s.architecture, arch);

        let tok = tokenizers::Tokenizer::from_file(folder.join("tokenizer.json")).unwrap();
        let text = reference["text"].as_str().unwrap();
        let want: Vec<u32> = serde_json::from_value(reference["token_ids"].clone()).unwrap();
        let ids = tok.encode(text, false).unwrap().get_ids().to_vec();
        assert_eq!(ids.len(), want.len(), "{name}: token count");
        assert_eq!(ids, want, "{name}: token ids differ from transformers'");
        assert_eq!(tok.decode(&ids, false).unwrap(), text, "{name}: round trip");

        let model = crate::families::load(&folder, |_| {});
        let w = crate::families::worst(&model, &reference);
        assert!(w < 2e-3, "{name}: largest logit difference {w}");
        eprintln!("{name}: largest logit difference against transformers {w:.2e}");
    }
    // Byte fallback is exercised: characters outside the learned vocabulary become byte pieces.
    let tok =
        tokenizers::Tokenizer::from_file(dir.path().join("llama-spm/tokenizer.json")).unwrap();
    let enc = tok.encode("🦴", false).unwrap();
    assert_eq!(
        enc.get_tokens(),
        ["▁", "<0xF0>", "<0x9F>", "<0xA6>", "<0xB4>"],
        "byte fallback"
    );
}
