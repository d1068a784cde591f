use tch::{Device, Kind};

/// `auto` (CUDA when present), `cpu`, `cuda` or `cuda:N`.
pub fn parse_device(s: &str) -> anyhow::Result<Device> {
    Ok(match s {
        "auto" => Device::cuda_if_available(),
        "cpu" => Device::Cpu,
        "cuda" => Device::Cuda(0),
        s if s.starts_with("cuda:") => Device::Cuda(s[5..].parse()?),
        other => anyhow::bail!("unknown device '{other}' (auto, cpu, cuda, cuda:N)"),
    })
}

/// `f32`, `f16` or `bf16`.
pub fn parse_kind(s: &str) -> anyhow::Result<Kind> {
    Ok(match s {
        "f32" | "float32" => Kind::Float,
        "f16" | "float16" => Kind::Half,
        "bf16" | "bfloat16" => Kind::BFloat16,
        other => anyhow::bail!("unknown dtype '{other}' (f32, f16, bf16)"),
    })
}
