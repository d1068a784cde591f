use std::collections::BTreeMap;

use tch::{nn::VarStore, Device, Kind, Tensor};

use crate::{Error, LlamaConfig, Result};

/// Which weights a recorder keeps.
type NameFilter = Box<dyn Fn(&str) -> bool + Send>;

/// Sums of squared Linear inputs, per weight name: what Wanda scores with. Recording a forward
/// pass adds `Σ_tokens x_j²` for every input channel `j` of every Linear, in f32 on the model's
/// device; no activation is kept.
#[derive(Default)]
pub struct StatsRecorder {
    sums: BTreeMap<String, (Tensor, u64)>,
    /// Only weights whose name passes this filter are recorded (all when `None`).
    only: Option<NameFilter>,
    /// `XᵀX` per group of Linears that read one input, and the tokens summed, when asked for
    /// ([`StatsRecorder::with_hessians`]).
    hessians: Option<Vec<(Vec<String>, Tensor, u64)>>,
}

/// Per weight name: `XᵀX` of its inputs (f32 `[in, in]`, on the model's device; one tensor
/// shared by the Linears that read the same input), the tokens summed, and the number of that
/// group of Linears (in recording order).
pub type HessianSums = BTreeMap<String, (Tensor, u64, u64)>;

/// `h += xᵀx` in f32. Half-precision CUDA inputs go through one tensor-core GEMM that
/// accumulates in f32 (products of two bf16 or f16 values are exact in f32, so this is the sum
/// an f32 GEMM of the widened inputs computes, in another order); others are widened first.
fn add_gram(h: &Tensor, x: &Tensor) -> Result<()> {
    let xt = x.f_transpose(0, 1)?;
    if x.device().is_cuda()
        && matches!(x.kind(), Kind::BFloat16 | Kind::Half)
        && h.f_addmm_dtype_out(h, &xt, x, Kind::Float).is_ok()
    {
        return Ok(());
    }
    let xf = x.f_to_kind(Kind::Float)?;
    let _ = h.shallow_clone().f_addmm_(&xf.f_transpose(0, 1)?, &xf)?;
    Ok(())
}

impl StatsRecorder {
    /// Records every Linear.
    pub fn new() -> StatsRecorder {
        StatsRecorder::default()
    }

    /// Records only the Linears whose weight name passes `keep`.
    pub fn only(keep: impl Fn(&str) -> bool + Send + 'static) -> StatsRecorder {
        StatsRecorder {
            sums: BTreeMap::new(),
            only: Some(Box::new(keep)),
            hessians: None,
        }
    }

    /// Also records `XᵀX` of every Linear's input (what SparseGPT needs): one f32 `[in, in]`
    /// matrix per distinct input.
    pub fn with_hessians(mut self) -> StatsRecorder {
        self.hessians = Some(Vec::new());
        self
    }

    fn wants(&self, name: &str) -> bool {
        self.only.as_ref().is_none_or(|f| f(name))
    }

    /// Adds the squared inputs `x` (`[.., in]`) of the Linears `names` (which share the input).
    fn add(&mut self, names: &[&str], x: &Tensor) -> Result<()> {
        let wanted: Vec<&str> = names.iter().copied().filter(|n| self.wants(n)).collect();
        if wanted.is_empty() {
            return Ok(());
        }
        let cols = *x.size().last().unwrap_or(&1);
        // Detached: a training forward records too, and the statistics are no part of its graph.
        let raw = x.f_detach()?.f_reshape([-1, cols])?;
        if let Some(groups) = self.hessians.as_mut() {
            let tokens = raw.size()[0] as u64;
            match groups
                .iter_mut()
                .find(|(g, _, _)| g.iter().eq(wanted.iter()))
            {
                Some((_, h, count)) => {
                    add_gram(h, &raw)?;
                    *count += tokens;
                }
                None => {
                    let h = Tensor::f_zeros([cols, cols], (Kind::Float, x.device()))?;
                    add_gram(&h, &raw)?;
                    groups.push((wanted.iter().map(|n| n.to_string()).collect(), h, tokens));
                }
            }
        }
        let flat = raw.f_to_kind(Kind::Float)?;
        let tokens = flat.size()[0] as u64;
        let sq = flat
            .f_square()?
            .f_sum_dim_intlist(Some(&[0i64][..]), false, Kind::Float)?;
        for n in wanted {
            match self.sums.get_mut(n) {
                Some((acc, count)) => {
                    let _ = acc.f_add_(&sq)?;
                    *count += tokens;
                }
                None => {
                    self.sums
                        .insert(n.to_string(), (sq.f_detach_copy()?, tokens));
                }
            }
        }
        Ok(())
    }

    /// The statistics: per weight name, the per-column sums of squared inputs and the number
    /// of tokens summed.
    pub fn into_sums(self) -> crate::ActivationSums {
        self.sums
    }

    /// The statistics and, when recorded, the Hessians (empty otherwise).
    pub fn into_parts(self) -> (crate::ActivationSums, HessianSums) {
        let mut hessians = HessianSums::new();
        for (group, (names, h, tokens)) in self.hessians.into_iter().flatten().enumerate() {
            for n in names {
                hessians.insert(n, (h.shallow_clone(), tokens, group as u64));
            }
        }
        (self.sums, hessians)
    }

    /// Weights with statistics.
    pub fn len(&self) -> usize {
        self.sums.len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.sums.is_empty()
    }
}

/// Keys and values of earlier positions, per block.
#[derive(Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
}

impl KvCache {
    /// An empty cache.
    pub fn new() -> KvCache {
        KvCache::default()
    }
    /// Positions cached.
    pub fn len(&self) -> i64 {
        self.layers
            .first()
            .and_then(|l| l.as_ref())
            .map_or(0, |(k, _)| k.size()[2])
    }
    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

struct Linear {
    name: String,
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.f_linear(&self.weight, self.bias.as_ref())?)
    }
}

struct Block {
    attn_norm: Tensor,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    mlp_norm: Tensor,
    gate: Linear,
    up: Linear,
    down: Linear,
}

/// A Llama-family decoder whose weights live in a `VarStore` under the checkpoint's names.
pub struct Llama {
    /// The configuration.
    pub config: LlamaConfig,
    vs: VarStore,
    embed: Tensor,
    blocks: Vec<Block>,
    norm: Tensor,
    lm_head: Option<Tensor>,
    inv_freq: Tensor,
}

/// Where a weight comes from while building.
enum Source<'a> {
    Checkpoint(&'a BTreeMap<String, Tensor>),
    Random(f64),
}

impl Llama {
    fn build(config: LlamaConfig, device: Device, kind: Kind, src: Source<'_>) -> Result<Llama> {
        config.validate()?;
        let mut vs = VarStore::new(device);
        vs.set_kind(kind);
        let root = vs.root();
        let mut used = 0usize;
        let mut get = |name: &str, dims: &[i64], norm: bool| -> Result<Tensor> {
            let path = name.rsplit_once('.').map_or(root.clone(), |(p, _)| {
                p.split('.').fold(root.clone(), |acc, part| &acc / part)
            });
            let leaf = name.rsplit('.').next().expect("a name");
            let t = match &src {
                Source::Checkpoint(map) => {
                    let t = map.get(name).ok_or_else(|| {
                        Error::Invalid(format!("the checkpoint has no tensor '{name}'"))
                    })?;
                    if !t.is_floating_point() {
                        return Err(Error::Invalid(format!(
                            "'{name}' is stored as {:?}; weights must be floating point",
                            t.kind()
                        )));
                    }
                    if t.size() != dims {
                        return Err(Error::Invalid(format!(
                            "'{name}' is {:?} in the checkpoint; the config says {dims:?}",
                            t.size()
                        )));
                    }
                    used += 1;
                    path.f_var_copy(leaf, &t.f_to_kind(kind)?)?
                }
                Source::Random(std) if norm => path.f_var(leaf, dims, tch::nn::Init::Const(1.0))?,
                Source::Random(std) => path.f_var(
                    leaf,
                    dims,
                    tch::nn::Init::Randn {
                        mean: 0.0,
                        stdev: *std,
                    },
                )?,
            };
            Ok(t)
        };
        let (h, inter) = (config.hidden_size as i64, config.intermediate_size as i64);
        let (hd, nh, nkv) = (
            config.head_dim() as i64,
            config.num_attention_heads as i64,
            config.kv_heads() as i64,
        );
        let embed = get(
            "model.embed_tokens.weight",
            &[config.vocab_size as i64, h],
            false,
        )?;
        let mut blocks = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let mut lin = |name: &str, out: i64, inp: i64, bias: bool| -> Result<Linear> {
                let weight = get(&format!("{p}.{name}.weight"), &[out, inp], false)?;
                let bias = if bias {
                    Some(get(&format!("{p}.{name}.bias"), &[out], false)?)
                } else {
                    None
                };
                Ok(Linear {
                    name: format!("{p}.{name}.weight"),
                    weight,
                    bias,
                })
            };
            let qb = config.qkv_bias();
            let q = lin("self_attn.q_proj", nh * hd, h, qb)?;
            let k = lin("self_attn.k_proj", nkv * hd, h, qb)?;
            let v = lin("self_attn.v_proj", nkv * hd, h, qb)?;
            let o = lin("self_attn.o_proj", h, nh * hd, false)?;
            let gate = lin("mlp.gate_proj", inter, h, false)?;
            let up = lin("mlp.up_proj", inter, h, false)?;
            let down = lin("mlp.down_proj", h, inter, false)?;
            let attn_norm = get(&format!("{p}.input_layernorm.weight"), &[h], true)?;
            let mlp_norm = get(&format!("{p}.post_attention_layernorm.weight"), &[h], true)?;
            blocks.push(Block {
                attn_norm,
                q,
                k,
                v,
                o,
                mlp_norm,
                gate,
                up,
                down,
            });
        }
        let norm = get("model.norm.weight", &[h], true)?;
        let lm_head = if config.tie_word_embeddings {
            None
        } else {
            Some(get(
                "lm_head.weight",
                &[config.vocab_size as i64, h],
                false,
            )?)
        };
        if let Source::Checkpoint(map) = &src {
            if used != map.len() {
                let extra: Vec<&String> = map
                    .keys()
                    .filter(|k| {
                        !(vs.variables().contains_key(*k)
                            || (config.tie_word_embeddings && *k == "lm_head.weight"))
                    })
                    .take(5)
                    .collect();
                if !extra.is_empty() {
                    return Err(Error::Invalid(format!(
                        "the checkpoint has tensors this config does not use, e.g. {extra:?}"
                    )));
                }
            }
        }
        let d = hd as f64;
        let mut inv_freq: Vec<f64> = (0..hd / 2)
            .map(|i| 1.0 / config.rope_theta.powf(2.0 * i as f64 / d))
            .collect();
        config.rope_scaling.apply(&mut inv_freq);
        let inv_freq: Vec<f32> = inv_freq.iter().map(|&f| f as f32).collect();
        let inv_freq = Tensor::from_slice(&inv_freq).f_to_device(device)?;
        Ok(Llama {
            config,
            vs,
            embed,
            blocks,
            norm,
            lm_head,
            inv_freq,
        })
    }

    /// A model of `config` with the weights of `checkpoint` (names as in Hugging Face Llama
    /// checkpoints), converted to `kind` on `device`. Missing, misshaped or unexpected tensors are
    /// errors that name them.
    pub fn from_tensors(
        config: LlamaConfig,
        checkpoint: Vec<(String, Tensor)>,
        device: Device,
        kind: Kind,
    ) -> Result<Llama> {
        let map: BTreeMap<String, Tensor> = checkpoint.into_iter().collect();
        let _g = tch::no_grad_guard();
        Llama::build(config, device, kind, Source::Checkpoint(&map))
    }

    /// The configuration of Mistral-7B with `layers` decoder blocks (32 in the real model): the
    /// shape the GPU benchmarks and the serving soak run on, with random weights.
    pub fn mistral_7b_shape(layers: usize) -> Result<LlamaConfig> {
        Ok(LlamaConfig::from_json(&serde_json::json!({
            "model_type": "mistral",
            "hidden_size": 4096,
            "intermediate_size": 14336,
            "num_hidden_layers": layers,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0,
            "vocab_size": 32000,
            "max_position_embeddings": 4096,
            "tie_word_embeddings": false,
        }))?)
    }

    /// A model of `config` with N(0, std) weights (norms at one), for shapes and speed tests.
    pub fn random(config: LlamaConfig, device: Device, kind: Kind, std: f64) -> Result<Llama> {
        let _g = tch::no_grad_guard();
        Llama::build(config, device, kind, Source::Random(std))
    }

    /// The weights, for the pruner (a `ParamSource`) and for optimizers.
    pub fn var_store(&self) -> &VarStore {
        &self.vs
    }

    /// Mutable access to the weights (to change their element type, say).
    pub fn var_store_mut(&mut self) -> &mut VarStore {
        &mut self.vs
    }

    /// The device of the weights.
    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// Number of decoder blocks.
    pub fn num_blocks(&self) -> usize {
        self.blocks.len()
    }

    /// The Linear weight names of block `i` (what the pruner selects by default).
    pub fn block_linear_names(&self, i: usize) -> Vec<String> {
        let b = &self.blocks[i];
        [&b.q, &b.k, &b.v, &b.o, &b.gate, &b.up, &b.down]
            .iter()
            .map(|l| l.name.clone())
            .collect()
    }

    fn rms_norm(&self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        // In f32, as the reference does, then back to the model's element type.
        let xf = x.f_to_kind(Kind::Float)?;
        let var = xf
            .f_square()?
            .f_mean_dim(Some(&[-1i64][..]), true, Kind::Float)?;
        let y = xf.f_mul(&var.f_add_scalar(self.config.rms_norm_eps)?.f_rsqrt()?)?;
        Ok(y.f_to_kind(x.kind())?.f_mul(w)?)
    }

    /// cos and sin of the rotary angles for positions `start..start+len`, `[len, head_dim]`.
    fn rope(&self, start: i64, len: i64, kind: Kind) -> Result<(Tensor, Tensor)> {
        let pos = Tensor::f_arange_start(start, start + len, (Kind::Float, self.device()))?;
        let freqs = pos.f_unsqueeze(1)?.f_mul(&self.inv_freq.f_unsqueeze(0)?)?;
        let emb = Tensor::f_cat(&[&freqs, &freqs], -1)?;
        Ok((emb.f_cos()?.f_to_kind(kind)?, emb.f_sin()?.f_to_kind(kind)?))
    }

    fn rotate(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let d = *x.size().last().expect("4-D");
        let x1 = x.f_narrow(-1, 0, d / 2)?;
        let x2 = x.f_narrow(-1, d / 2, d / 2)?;
        let rot = Tensor::f_cat(&[&x2.f_neg()?, &x1], -1)?;
        Ok(x.f_mul(cos)?.f_add(&rot.f_mul(sin)?)?)
    }

    /// Token embeddings of `ids` (`[batch, len]`).
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        Ok(Tensor::f_embedding(&self.embed, ids, -1, false, false)?)
    }

    /// Block `i` on hidden states `x` (`[batch, len, hidden]`) at positions from `start`.
    pub fn block_forward(
        &self,
        i: usize,
        x: &Tensor,
        start: i64,
        cache: Option<&mut KvCache>,
        mut stats: Option<&mut StatsRecorder>,
    ) -> Result<Tensor> {
        let b = &self.blocks[i];
        let (bsz, len) = (x.size()[0], x.size()[1]);
        let (nh, nkv, hd) = (
            self.config.num_attention_heads as i64,
            self.config.kv_heads() as i64,
            self.config.head_dim() as i64,
        );
        let h = self.rms_norm(x, &b.attn_norm)?;
        if let Some(s) = stats.as_deref_mut() {
            s.add(&[&b.q.name, &b.k.name, &b.v.name], &h)?;
        }
        let q =
            b.q.forward(&h)?
                .f_view([bsz, len, nh, hd])?
                .f_transpose(1, 2)?;
        let k =
            b.k.forward(&h)?
                .f_view([bsz, len, nkv, hd])?
                .f_transpose(1, 2)?;
        let v =
            b.v.forward(&h)?
                .f_view([bsz, len, nkv, hd])?
                .f_transpose(1, 2)?;
        let (cos, sin) = self.rope(start, len, q.kind())?;
        let q = Llama::rotate(&q, &cos, &sin)?;
        let k = Llama::rotate(&k, &cos, &sin)?;
        let (k, v) = match cache {
            Some(c) => {
                if c.layers.len() < self.blocks.len() {
                    c.layers.resize_with(self.blocks.len(), || None);
                }
                let (k, v) = match c.layers[i].take() {
                    Some((pk, pv)) => {
                        (Tensor::f_cat(&[&pk, &k], 2)?, Tensor::f_cat(&[&pv, &v], 2)?)
                    }
                    None => (k, v),
                };
                c.layers[i] = Some((k.shallow_clone(), v.shallow_clone()));
                (k, v)
            }
            None => (k, v),
        };
        let total = k.size()[2];
        // Causal (and, for Mistral, windowed) attention; with a cache the queries sit at the end.
        let attn = if total == len && self.config.sliding_window.is_none_or(|w| w as i64 >= total) {
            Tensor::f_scaled_dot_product_attention::<Tensor>(
                &q,
                &k,
                &v,
                None,
                0.0,
                true,
                None,
                nkv != nh,
            )?
        } else {
            let qpos = Tensor::f_arange_start(total - len, total, (Kind::Int64, self.device()))?
                .f_unsqueeze(1)?;
            let kpos = Tensor::f_arange(total, (Kind::Int64, self.device()))?.f_unsqueeze(0)?;
            let mut allowed = kpos.f_le_tensor(&qpos)?;
            if let Some(w) = self.config.sliding_window {
                allowed = allowed.f_logical_and(&qpos.f_sub(&kpos)?.f_lt(w as i64)?)?;
            }
            Tensor::f_scaled_dot_product_attention(
                &q,
                &k,
                &v,
                Some(&allowed),
                0.0,
                false,
                None,
                nkv != nh,
            )?
        };
        let attn = attn.f_transpose(1, 2)?.f_reshape([bsz, len, nh * hd])?;
        if let Some(s) = stats.as_deref_mut() {
            s.add(&[&b.o.name], &attn)?;
        }
        let x = x.f_add(&b.o.forward(&attn)?)?;
        let h = self.rms_norm(&x, &b.mlp_norm)?;
        if let Some(s) = stats.as_deref_mut() {
            s.add(&[&b.gate.name, &b.up.name], &h)?;
        }
        let act = b.gate.forward(&h)?.f_silu()?.f_mul(&b.up.forward(&h)?)?;
        if let Some(s) = stats {
            s.add(&[&b.down.name], &act)?;
        }
        Ok(x.f_add(&b.down.forward(&act)?)?)
    }

    /// Logits of the final hidden states.
    pub fn head(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.rms_norm(x, &self.norm)?;
        Ok(h.f_linear::<Tensor>(self.lm_head.as_ref().unwrap_or(&self.embed), None)?)
    }

    /// Logits `[batch, len, vocab]` for `ids` (`[batch, len]`), continuing `cache` when given, and
    /// recording Linear input statistics into `stats` when given.
    pub fn forward(
        &self,
        ids: &Tensor,
        mut cache: Option<&mut KvCache>,
        mut stats: Option<&mut StatsRecorder>,
    ) -> Result<Tensor> {
        let start = cache.as_ref().map_or(0, |c| c.len());
        let mut x = self.embed(ids)?;
        for i in 0..self.blocks.len() {
            x = self.block_forward(i, &x, start, cache.as_deref_mut(), stats.as_deref_mut())?;
        }
        self.head(&x)
    }
}
