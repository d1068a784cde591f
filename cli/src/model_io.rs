use tch::Kind;

pub use birdbone_llama::parse_device;

/// `f32`, `f16` or `bf16`.
pub fn parse_kind(s: &str) -> anyhow::Result<Kind> {
    Ok(match s {
        "f32" | "float32" => Kind::Float,
        "f16" | "float16" => Kind::Half,
        "bf16" | "bfloat16" => Kind::BFloat16,
        other => anyhow::bail!("unknown dtype '{other}' (f32, f16, bf16)"),
    })
}
