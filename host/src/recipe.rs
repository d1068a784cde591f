//! Recipes: one file that says how a model is pruned — the components and their parameters,
//! the sparsity or N:M pattern, which weights, the calibration, the device, element type and
//! output — for one-shot pruning (`birdbone prune --recipe`) and, with its `training` section,
//! for the fine-tuning callback. YAML or JSON; unknown fields are errors. llm-compressor
//! recipes are read too ([`crate::llm_compressor`]).

use std::{collections::BTreeMap, fmt, path::Path, str::FromStr};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    error::{Error, Result},
    filter::ParamFilter,
    schedule::{CompressionConfig, GrowthPlateConfig, LayerPlateConfig, RegrowConfig, Schedule},
    PassConfig,
};

/// How a model is pruned. Every field has a default, so `{}` is a recipe (magnitude, global,
/// 50%).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Recipe {
    /// The scorer: a component name, or `{name, params}`.
    pub scorer: ComponentSpec,
    /// The strategy: a component name, or `{name, params}`.
    pub strategy: ComponentSpec,
    /// Fraction of the selected weights to prune, in [0, 1].
    pub sparsity: f64,
    /// An allocator (`uniform`, `owl`, `birdbone`, or a plugin's): a sparsity for each
    /// parameter, exactly `round(sparsity · N)` over them all. Default: none (the strategy's
    /// own count in each scope).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allocator: Option<ComponentSpec>,
    /// Replay a saved allocation (the `allocation.json` written beside a pruned model) instead
    /// of running an allocator.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allocation: Option<std::path::PathBuf>,
    /// An N:M pattern, "N:M" (N kept of every M), for strategies that produce one (`nm`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pattern: Option<NmPattern>,
    /// Parameters to prune: globs on names, or `re:` regexes on module names (default: the
    /// Linear weights of the blocks).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<String>,
    /// Parameters never to prune (same pattern forms).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
    /// Calibration text run through the model for scorers that need activation statistics.
    /// Default: none, or `{}` (the defaults below) when the scorer needs statistics.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub calibration: Option<Calibration>,
    /// `auto` (CUDA when present), `cpu`, `cuda` or `cuda:N`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceSpec>,
    /// Element type to prune in and write: f32, f16 or bf16 (default: as stored).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dtype: Option<Dtype>,
    /// Where and how the pruned model is written.
    #[serde(skip_serializing_if = "Output::is_default")]
    pub output: Output,
    /// The fine-tuning callback's schedule. One-shot pruning (`birdbone prune`) goes straight
    /// to `sparsity`; the schedule's final sparsity must equal it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub training: Option<Training>,
}

impl Default for Recipe {
    fn default() -> Self {
        Recipe {
            scorer: ComponentSpec::named("magnitude"),
            strategy: ComponentSpec::named("global"),
            sparsity: 0.5,
            allocator: None,
            allocation: None,
            pattern: None,
            include: vec![],
            exclude: vec![],
            calibration: None,
            device: None,
            dtype: None,
            output: Output::default(),
            training: None,
        }
    }
}

/// A scorer or strategy and its parameters (values are handed to the plugin as text and
/// checked against the types it declares).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ComponentSpec {
    /// The component's name (`birdbone plugins` lists them).
    pub name: String,
    /// Its parameters.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, Scalar>,
}

impl ComponentSpec {
    /// A component with no parameters set.
    pub fn named(name: &str) -> ComponentSpec {
        ComponentSpec {
            name: name.into(),
            params: BTreeMap::new(),
        }
    }

    /// The parameters as the registry takes them.
    pub fn settings(&self) -> BTreeMap<String, String> {
        self.params
            .iter()
            .map(|(k, v)| (k.clone(), v.to_string()))
            .collect()
    }
}

/// A component written out in full.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct ComponentFull {
    /// The component's name (`birdbone plugins` lists them).
    name: String,
    /// Its parameters.
    #[serde(default)]
    params: BTreeMap<String, Scalar>,
}

impl JsonSchema for ComponentSpec {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ComponentSpec".into()
    }
    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let full = generator.subschema_for::<ComponentFull>();
        schemars::json_schema!({
            "description": "A component name, or {name, params}.",
            "anyOf": [{"type": "string"}, full]
        })
    }
}

impl<'de> Deserialize<'de> for ComponentSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use ComponentFull as Full;
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = ComponentSpec;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a component name, or {name, params}")
            }
            fn visit_str<E: serde::de::Error>(
                self,
                v: &str,
            ) -> std::result::Result<Self::Value, E> {
                Ok(ComponentSpec::named(v))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> std::result::Result<Self::Value, A::Error> {
                let f = Full::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(ComponentSpec {
                    name: f.name,
                    params: f.params,
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// A parameter value: text, a number or a boolean.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Scalar {
    /// true or false.
    Bool(bool),
    /// A whole number.
    Int(i64),
    /// A number.
    Float(f64),
    /// Text.
    Text(String),
}

impl fmt::Display for Scalar {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Scalar::Bool(b) => write!(f, "{b}"),
            Scalar::Int(i) => write!(f, "{i}"),
            Scalar::Float(x) => write!(f, "{x}"),
            Scalar::Text(s) => f.write_str(s),
        }
    }
}

/// Types written as text in recipes: read through `FromStr` (whose error names the bad value)
/// and written through `Display`.
macro_rules! text_serde {
    ($($t:ty),*) => {$(
        impl TryFrom<String> for $t {
            type Error = String;
            fn try_from(s: String) -> std::result::Result<Self, String> {
                s.parse()
            }
        }
        impl From<$t> for String {
            fn from(v: $t) -> String {
                v.to_string()
            }
        }
    )*};
}
text_serde!(NmPattern, DeviceSpec, Dtype, ByteSize);

/// An N:M pattern: `n` weights kept of every group of `m` along a row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(try_from = "String", into = "String")]
#[schemars(with = "String")]
pub struct NmPattern {
    /// Kept per group.
    pub n: u32,
    /// Group size.
    pub m: u32,
}

impl FromStr for NmPattern {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let bad =
            || format!("pattern '{s}' is not N:M with 0 <= N <= M and 1 <= M <= 32 (e.g. 2:4)");
        let (n, m) = s.split_once(':').ok_or_else(bad)?;
        let (n, m): (u32, u32) = (
            n.trim().parse().map_err(|_| bad())?,
            m.trim().parse().map_err(|_| bad())?,
        );
        if m == 0 || n > m || m > 32 {
            return Err(bad());
        }
        Ok(NmPattern { n, m })
    }
}

impl fmt::Display for NmPattern {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}:{}", self.n, self.m)
    }
}

/// Where the computation runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(try_from = "String", into = "String")]
#[schemars(with = "String")]
pub enum DeviceSpec {
    /// CUDA device 0 when present, else the CPU.
    Auto,
    /// The CPU.
    Cpu,
    /// CUDA device N.
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(DeviceSpec::Auto),
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceSpec::Cuda)
                .ok_or_else(|| format!("unknown device '{s}' (auto, cpu, cuda, cuda:N)")),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            DeviceSpec::Auto => f.write_str("auto"),
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// Element type of the weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(try_from = "String", into = "String")]
#[schemars(with = "String")]
pub enum Dtype {
    /// float32.
    F32,
    /// float16.
    F16,
    /// bfloat16.
    Bf16,
}

impl Dtype {
    /// The name Hugging Face's `config.json` uses (`torch_dtype`).
    pub fn torch_name(self) -> &'static str {
        match self {
            Dtype::F32 => "float32",
            Dtype::F16 => "float16",
            Dtype::Bf16 => "bfloat16",
        }
    }
}

impl FromStr for Dtype {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "f32" | "float32" => Ok(Dtype::F32),
            "f16" | "float16" => Ok(Dtype::F16),
            "bf16" | "bfloat16" => Ok(Dtype::Bf16),
            _ => Err(format!("unknown dtype '{s}' (f32, f16, bf16)")),
        }
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(match self {
            Dtype::F32 => "f32",
            Dtype::F16 => "f16",
            Dtype::Bf16 => "bf16",
        })
    }
}

/// How activation statistics are gathered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum CalibrationMode {
    /// The whole model sees the calibration text once, then one pass prunes every weight.
    #[default]
    OnePass,
    /// Block by block (the Wanda paper's variant): each block's statistics come from the
    /// outputs of the blocks before it *after* they were pruned. One pass per block, so the
    /// strategy must rank within a parameter or a row (not `global`).
    Sequential,
}

/// Calibration text run through the model before pruning.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Calibration {
    /// A text file, or one of the bundled names (c4.utf8, wiki.utf8, tiny.utf8).
    pub text: String,
    /// Number of windows.
    pub windows: usize,
    /// Tokens per window.
    pub length: usize,
    /// Windows per forward pass.
    pub batch: usize,
    /// one-pass or sequential.
    pub mode: CalibrationMode,
}

impl Default for Calibration {
    /// The published Wanda/SparseGPT protocol's calibration: C4, windows of 512 tokens (32 of
    /// them here, where the papers take 128 of 2048).
    fn default() -> Self {
        Calibration {
            text: "c4.utf8".into(),
            windows: 32,
            length: 512,
            batch: 4,
            mode: CalibrationMode::OnePass,
        }
    }
}

/// Where and how the pruned model is written.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Output {
    /// The folder (`--out` overrides it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dir: Option<std::path::PathBuf>,
    /// Largest safetensors shard, e.g. "5GB", "500MB" (default 5GB); past it the weights are
    /// split and listed in `model.safetensors.index.json`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_shard_size: Option<ByteSize>,
}

impl Output {
    fn is_default(&self) -> bool {
        *self == Output::default()
    }
}

/// A size in bytes, written as a number with an optional unit: B, KB, MB, GB, TB (powers of
/// 1000, as Hugging Face's `max_shard_size`) or KiB, MiB, GiB (powers of 1024).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(try_from = "String", into = "String")]
#[schemars(with = "String")]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// Hugging Face's default shard size.
    pub const DEFAULT_SHARD: ByteSize = ByteSize(5_000_000_000);
}

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let t = s.trim();
        let split = t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let mult: u64 = match unit.to_ascii_uppercase().as_str() {
            "" | "B" => 1,
            "KB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            "TB" => 1_000_000_000_000,
            "KIB" => 1 << 10,
            "MIB" => 1 << 20,
            "GIB" => 1 << 30,
            _ => {
                return Err(format!(
                    "size '{s}': unknown unit '{unit}' (B, KB, MB, GB, TB, KiB, MiB, GiB)"
                ))
            }
        };
        let n: f64 = num
            .trim()
            .parse()
            .map_err(|_| format!("size '{s}' does not start with a number"))?;
        if !(n > 0.0 && n.is_finite()) {
            return Err(format!("size '{s}' must be positive"));
        }
        Ok(ByteSize((n * mult as f64) as u64))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}B", self.0)
    }
}

/// The fine-tuning callback's part of a recipe.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Training {
    /// When passes run and to what sparsity.
    pub schedule: Schedule,
    /// Growth-plate protection, when wanted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub growth_plates: Option<GrowthPlateConfig>,
    /// Regrowth at schedule points, when wanted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regrow: Option<RegrowConfig>,
    /// Growth plates over layers (the second design): each parameter to its allocated
    /// sparsity, the least load-bearing first, then frozen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer_plates: Option<LayerPlateConfig>,
}

impl Recipe {
    /// Reads a recipe file: Birdbone's own (YAML or JSON, by extension; other extensions are
    /// tried as YAML, of which JSON is a subset), or an llm-compressor recipe (recognised by
    /// its `*_stage` / `*_modifiers` keys). Checked with [`Recipe::validate`].
    pub fn from_file(path: &Path) -> Result<Recipe> {
        // A recipe is a few hundred bytes; a file past this is a mistake (or an attack), not a
        // recipe, and is refused before it is read.
        const MAX_RECIPE_BYTES: u64 = 1 << 20;
        let io = |source| Error::Io {
            path: path.into(),
            source,
        };
        let len = std::fs::metadata(path).map_err(io)?.len();
        if len > MAX_RECIPE_BYTES {
            return Err(Error::Format {
                path: path.into(),
                message: format!("{len} bytes: a recipe is at most {MAX_RECIPE_BYTES}"),
            });
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        Recipe::from_text(&text, path.extension().is_some_and(|e| e == "json"), path)
    }

    /// A recipe from its text: JSON when `json`, else YAML (of which JSON is a subset). Errors
    /// name `origin`.
    pub fn from_text(text: &str, json: bool, origin: &Path) -> Result<Recipe> {
        let path = origin;
        let format_err = |message: String| Error::Format {
            path: path.into(),
            message,
        };
        let value: serde_json::Value = if json {
            serde_json::from_str(text).map_err(|e| format_err(e.to_string()))?
        } else {
            serde_norway::from_str(text).map_err(|e| format_err(e.to_string()))?
        };
        let recipe = if crate::llm_compressor::is_llm_compressor(&value) {
            crate::llm_compressor::to_recipe(&value).map_err(|e| format_err(e.to_string()))?
        } else {
            // The error names the field it is about (`sparsity: invalid type ...`).
            serde_path_to_error::deserialize(value).map_err(|e| {
                let field = e.path().to_string();
                format_err(if field == "." {
                    e.into_inner().to_string()
                } else {
                    format!("{field}: {}", e.into_inner())
                })
            })?
        };
        recipe.validate().map_err(|e| format_err(e.to_string()))?;
        Ok(recipe)
    }

    /// Checks what can be checked without plugins or a model: numbers in range, patterns
    /// that compile, a training schedule that ends at `sparsity`.
    pub fn validate(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.sparsity) {
            crate::bail!("sparsity must be between 0 and 1, got {}", self.sparsity);
        }
        if self.allocator.is_some() && self.allocation.is_some() {
            crate::bail!("give an allocator or a saved allocation to replay, not both");
        }
        if (self.allocator.is_some() || self.allocation.is_some()) && self.pattern.is_some() {
            crate::bail!(
                "an N:M pattern prunes the same share of every group, so it cannot be allocated: drop the allocator or the pattern"
            );
        }
        self.filter().validate()?;
        if let Some(c) = &self.calibration {
            if c.windows == 0 || c.length < 2 || c.batch == 0 {
                crate::bail!(
                    "calibration needs windows >= 1, length >= 2 and batch >= 1 (got {}, {}, {})",
                    c.windows,
                    c.length,
                    c.batch
                );
            }
        }
        if let Some(t) = &self.training {
            t.schedule.validate()?;
            let last = match t.schedule {
                Schedule::OneShot { sparsity, .. } => sparsity,
                Schedule::Gradual { final_sparsity, .. } => final_sparsity,
            };
            if (last - self.sparsity).abs() > 1e-12 {
                crate::bail!(
                    "the training schedule ends at sparsity {last} but the recipe's sparsity is {}: make them equal",
                    self.sparsity
                );
            }
        }
        Ok(())
    }

    /// The parameters the recipe prunes.
    pub fn filter(&self) -> ParamFilter {
        ParamFilter {
            include: self.include.clone(),
            exclude: self.exclude.clone(),
        }
    }

    /// What one pass is asked for.
    pub fn pass_config(&self) -> PassConfig {
        PassConfig {
            sparsity: self.sparsity,
            nm: self.pattern.map(|p| (p.n, p.m)),
            keep_masks: true,
            filter: self.filter(),
            allocation: None,
        }
    }

    /// The fine-tuning callback's configuration (the recipe needs a `training` section).
    pub fn compression(&self) -> Result<CompressionConfig> {
        let Some(t) = &self.training else {
            crate::bail!(
                "the recipe has no `training` section (a schedule) for the fine-tuning callback"
            );
        };
        Ok(CompressionConfig {
            schedule: t.schedule.clone(),
            filter: self.filter(),
            nm: self.pattern.map(|p| (p.n, p.m)),
            growth_plates: t.growth_plates.clone(),
            regrow: t.regrow.clone(),
            layer_plates: t.layer_plates.clone(),
        })
    }

    /// The recipe as YAML (what is written beside a pruned model).
    pub fn to_yaml(&self) -> String {
        serde_norway::to_string(self).expect("a recipe serializes")
    }

    /// The JSON Schema of recipe files (docs/recipe.schema.json is this).
    pub fn json_schema() -> String {
        let schema = schemars::schema_for!(Recipe);
        serde_json::to_string_pretty(&schema).expect("a schema serializes") + "\n"
    }
}
