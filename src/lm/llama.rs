//! A llama-architecture decoder in candle, with its weights read from a GGUF file and held as
//! trainable f32 variables: token embedding tied to the output head, pre-norm blocks of RMSNorm,
//! grouped-query attention with rotary position embeddings in llama.cpp's interleaved layout
//! (GGUF files store Q and K permuted for it), and a SwiGLU MLP.
//!
//! Two ways through it:
//! - [`Llama::hidden`] runs whole (left-padded) sequences, differentiably when asked: the GRPO
//!   loss backpropagates through it;
//! - [`Llama::extend`] appends tokens to a [`KvCache`] and returns the next-token logits, for
//!   sampling (no gradient; candle's fused RMSNorm, softmax and rope kernels).
//!
//! Left padding: row b of a batch starts at column `start[b]`; its positions count from there,
//! and no query attends to a key before it, so a padded row computes exactly what it would alone.

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor, Var, D};
use candle_nn::{Linear, VarMap};

use super::gguf::Gguf;
use crate::error::{Error, Result};

/// Shape and constants of a llama model, from the GGUF metadata (`llama.*` keys).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LlamaConfig {
    /// Vocabulary size V.
    pub vocab: usize,
    /// Residual width d.
    pub d_model: usize,
    /// Transformer blocks.
    pub layers: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (grouped-query attention: `heads` is a multiple of it).
    pub kv_heads: usize,
    /// Hidden width of the SwiGLU MLP.
    pub ffn: usize,
    /// Rotary embedding base θ.
    pub rope_theta: f64,
    /// RMSNorm ε.
    pub rms_eps: f64,
    /// Context length: the longest prompt + response.
    pub context: usize,
}

impl LlamaConfig {
    /// Width of one attention head, d / heads.
    pub fn head_dim(&self) -> usize {
        self.d_model / self.heads
    }

    /// Reads and checks the `llama.*` metadata. A file of another architecture, or a shape this
    /// implementation does not cover (partial rotary dimension, heads not dividing d), is an
    /// [`Error::Model`].
    pub fn from_gguf(g: &Gguf) -> Result<Self> {
        let bad = |msg: String| Error::Model { path: g.path().display().to_string(), msg };
        let arch = g.string("general.architecture")?;
        if arch != "llama" {
            return Err(bad(format!(
                "architecture `{arch}`; only `llama` GGUF files (e.g. SmolLM2, `bash scripts/fetch-model.sh`) are supported"
            )));
        }
        let vocab = match g.usize("llama.vocab_size") {
            Ok(v) => v,
            Err(_) => g.strings("tokenizer.ggml.tokens")?.len(),
        };
        let cfg = Self {
            vocab,
            d_model: g.usize("llama.embedding_length")?,
            layers: g.usize("llama.block_count")?,
            heads: g.usize("llama.attention.head_count")?,
            kv_heads: g.usize("llama.attention.head_count_kv")?,
            ffn: g.usize("llama.feed_forward_length")?,
            rope_theta: g.f64("llama.rope.freq_base").unwrap_or(10_000.0),
            rms_eps: g.f64("llama.attention.layer_norm_rms_epsilon")?,
            context: g.usize("llama.context_length")?,
        };
        cfg.validate().map_err(|e| bad(e.to_string()))?;
        if let Ok(rope_dim) = g.usize("llama.rope.dimension_count") {
            if rope_dim != cfg.head_dim() {
                return Err(bad(format!(
                    "rope dimension {rope_dim} != head dimension {}: partial rotary embeddings are not supported",
                    cfg.head_dim()
                )));
            }
        }
        Ok(cfg)
    }

    /// Checks that the shape is buildable.
    pub fn validate(&self) -> Result<()> {
        let bad = |name, value: usize, why| Err(Error::InvalidConfig { name, value: value.to_string(), why });
        if self.vocab == 0 {
            return Err(Error::EmptyVocab);
        }
        if self.d_model == 0 || self.layers == 0 || self.ffn == 0 || self.context == 0 {
            return bad("embedding_length/block_count/feed_forward_length/context_length", 0, "must be >= 1");
        }
        if self.heads == 0 || !self.d_model.is_multiple_of(self.heads) || !self.head_dim().is_multiple_of(2) {
            return bad("head_count", self.heads, "must divide the embedding length into even head widths");
        }
        if self.kv_heads == 0 || !self.heads.is_multiple_of(self.kv_heads) {
            return bad("head_count_kv", self.kv_heads, "must divide head_count");
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 1.0) {
            return bad("rope.freq_base", self.rope_theta as usize, "must be finite and > 1");
        }
        Ok(())
    }
}

/// One pre-norm block.
#[derive(Debug, Clone)]
struct Block {
    attn_norm: Tensor,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    ffn_norm: Tensor,
    gate: Linear,
    up: Linear,
    down: Linear,
}

/// Cached keys and values of a batch being generated, and where each row starts.
#[derive(Debug, Clone)]
pub struct KvCache {
    k: Vec<Option<Tensor>>,
    v: Vec<Option<Tensor>>,
    start: Vec<usize>,
    len: usize,
}

impl KvCache {
    /// Columns held so far (padding included).
    pub fn len(&self) -> usize {
        self.len
    }

    /// True before the first [`Llama::extend`].
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Rows in the batch.
    pub fn batch(&self) -> usize {
        self.start.len()
    }

    /// Keeps only the rows `keep` (in that order), e.g. to drop finished sequences.
    pub fn retain(&mut self, keep: &[usize]) -> Result<()> {
        if keep.iter().any(|&r| r >= self.start.len()) {
            return Err(Error::ShapeMismatch {
                name: "keep",
                expected: format!("row indices < {}", self.start.len()),
                got: format!("{keep:?}"),
            });
        }
        let idx =
            Tensor::from_vec(keep.iter().map(|&r| r as u32).collect::<Vec<_>>(), keep.len(), &device_of(&self.k))?;
        for t in self.k.iter_mut().chain(self.v.iter_mut()).flatten() {
            *t = t.index_select(&idx, 0)?;
        }
        self.start = keep.iter().map(|&r| self.start[r]).collect();
        Ok(())
    }
}

fn device_of(ts: &[Option<Tensor>]) -> Device {
    ts.iter().flatten().next().map(|t| t.device().clone()).unwrap_or(Device::Cpu)
}

/// A llama model whose weights are candle variables (f32).
pub struct Llama {
    varmap: VarMap,
    trainable: Trainable,
    embed: Tensor,
    blocks: Vec<Block>,
    norm: Tensor,
    cos: Tensor,
    sin: Tensor,
    cfg: LlamaConfig,
    device: Device,
}

impl std::fmt::Debug for Llama {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Llama").field("cfg", &self.cfg).field("device", &self.device).finish_non_exhaustive()
    }
}

/// Which weights train: the last `blocks` transformer blocks (with the final norm) and, when
/// `embedding`, the tied embedding/head. The others are constants: no gradient is computed for
/// them, and the forward below the lowest trainable weight runs candle's fused kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trainable {
    /// Trainable blocks, counted from the top.
    pub blocks: usize,
    /// Train the tied token embedding / output head.
    pub embedding: bool,
}

impl Trainable {
    /// Every weight.
    pub const ALL: Self = Self { blocks: usize::MAX, embedding: true };

    fn block(&self, i: usize, layers: usize) -> bool {
        i + self.blocks.min(layers) >= layers
    }

    fn name(&self, name: &str, layers: usize) -> bool {
        if name.starts_with("token_embd") {
            return self.embedding;
        }
        if name.starts_with("output_norm") {
            return self.blocks > 0;
        }
        let block = name.strip_prefix("blk.").and_then(|r| r.split('.').next()).and_then(|i| i.parse::<usize>().ok());
        block.is_some_and(|i| self.block(i, layers))
    }
}

/// The GGUF tensor names of one block, with their candle shapes.
fn block_tensors(cfg: &LlamaConfig, i: usize) -> Vec<(String, Vec<usize>)> {
    let (d, kv, f) = (cfg.d_model, cfg.kv_heads * cfg.head_dim(), cfg.ffn);
    [
        ("attn_norm", vec![d]),
        ("attn_q", vec![d, d]),
        ("attn_k", vec![kv, d]),
        ("attn_v", vec![kv, d]),
        ("attn_output", vec![d, d]),
        ("ffn_norm", vec![d]),
        ("ffn_gate", vec![f, d]),
        ("ffn_up", vec![f, d]),
        ("ffn_down", vec![d, f]),
    ]
    .into_iter()
    .map(|(n, s)| (format!("blk.{i}.{n}.weight"), s))
    .collect()
}

impl Llama {
    /// Reads a llama GGUF file's weights (dequantized to f32) onto `device`.
    pub fn from_gguf(g: &mut Gguf, device: &Device) -> Result<Self> {
        let cfg = LlamaConfig::from_gguf(g)?;
        if g.has_tensor("output.weight") {
            return Err(Error::Model {
                path: g.path().display().to_string(),
                msg: "has an untied output head (`output.weight`); only tied-embedding models are supported".into(),
            });
        }
        let mut names = vec![("token_embd.weight".to_string(), vec![cfg.vocab, cfg.d_model])];
        for i in 0..cfg.layers {
            names.extend(block_tensors(&cfg, i));
        }
        names.push(("output_norm.weight".to_string(), vec![cfg.d_model]));
        let mut weights = Vec::with_capacity(names.len());
        for (name, dims) in names {
            let t = g.tensor_f32(&name, &dims, device)?;
            weights.push((name, t));
        }
        Self::from_weights(cfg, weights, device)
    }

    /// Opens a GGUF file and reads its model (see [`Llama::from_gguf`]).
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        Self::from_gguf(&mut Gguf::open(path)?, device)
    }

    fn from_weights(cfg: LlamaConfig, weights: Vec<(String, Tensor)>, device: &Device) -> Result<Self> {
        let varmap = VarMap::new();
        {
            let mut data = varmap.data().lock().unwrap_or_else(|e| e.into_inner());
            for (name, t) in weights {
                data.insert(name, Var::from_tensor(&t.to_dtype(DType::F32)?)?);
            }
        }
        Self::build(cfg, varmap, Trainable::ALL, device)
    }

    /// Makes only `trainable` weights variables of the forward (see [`Trainable`]); the values
    /// are kept. [`Llama::vars`] then returns those only.
    pub fn set_trainable(&mut self, trainable: Trainable) -> Result<()> {
        if trainable.blocks == 0 && !trainable.embedding {
            return Err(Error::InvalidConfig { name: "train_blocks", value: "0".into(), why: "nothing would train" });
        }
        let varmap = std::mem::replace(&mut self.varmap, VarMap::new());
        *self = Self::build(self.cfg, varmap, trainable, &self.device.clone())?;
        Ok(())
    }

    /// Which weights train.
    pub fn trainable(&self) -> Trainable {
        self.trainable
    }

    fn build(cfg: LlamaConfig, varmap: VarMap, trainable: Trainable, device: &Device) -> Result<Self> {
        let mut get = std::collections::HashMap::new();
        {
            let data = varmap.data().lock().unwrap_or_else(|e| e.into_inner());
            for (name, var) in data.iter() {
                let t = var.as_tensor();
                get.insert(name.clone(), if trainable.name(name, cfg.layers) { t.clone() } else { t.detach() });
            }
        }
        let take = |name: &str| -> Result<Tensor> {
            get.get(name)
                .cloned()
                .ok_or_else(|| Error::Model { path: String::new(), msg: format!("tensor `{name}` is missing") })
        };
        let lin = |name: String| -> Result<Linear> { Ok(Linear::new(take(&name)?, None)) };
        let blocks = (0..cfg.layers)
            .map(|i| {
                let n = |s: &str| format!("blk.{i}.{s}.weight");
                Ok(Block {
                    attn_norm: take(&n("attn_norm"))?,
                    q: lin(n("attn_q"))?,
                    k: lin(n("attn_k"))?,
                    v: lin(n("attn_v"))?,
                    o: lin(n("attn_output"))?,
                    ffn_norm: take(&n("ffn_norm"))?,
                    gate: lin(n("ffn_gate"))?,
                    up: lin(n("ffn_up"))?,
                    down: lin(n("ffn_down"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let (cos, sin) = rope_tables(&cfg, device)?;
        Ok(Self {
            embed: take("token_embd.weight")?,
            norm: take("output_norm.weight")?,
            blocks,
            cos,
            sin,
            varmap,
            trainable,
            cfg,
            device: device.clone(),
        })
    }

    /// A deep copy with its own variables (a frozen reference policy).
    pub fn deep_copy(&self) -> Result<Self> {
        let weights =
            self.sorted_vars().into_iter().map(|(n, v)| Ok((n, v.as_tensor().copy()?))).collect::<Result<Vec<_>>>()?;
        Self::from_weights(self.cfg, weights, &self.device)
    }

    fn sorted_vars(&self) -> Vec<(String, Var)> {
        crate::train::model::sorted_vars(&self.varmap)
    }

    /// The trainable variables (for an optimizer), in name order.
    pub fn vars(&self) -> Vec<Var> {
        let layers = self.cfg.layers;
        self.sorted_vars().into_iter().filter(|(n, _)| self.trainable.name(n, layers)).map(|(_, v)| v).collect()
    }

    /// Every weight by its GGUF name, copied to the host (f32, flattened): for checkpoints and
    /// tests.
    pub fn clone_weights(&self) -> Result<Vec<(String, Vec<f32>)>> {
        self.sorted_vars().into_iter().map(|(n, v)| Ok((n, v.as_tensor().flatten_all()?.to_vec1::<f32>()?))).collect()
    }

    /// Parameters in the trainable variables.
    pub fn trainable_params(&self) -> usize {
        self.vars().iter().map(|v| v.elem_count()).sum()
    }

    /// The model's shape.
    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Final-norm hidden states `[B, T, d]` of token ids `[B, T]` (u32) whose row b starts at
    /// column `start[b]` (left padding; the pad columns' outputs are finite and meaningless).
    /// `differentiable` selects candle ops with a backward (training) over its fused kernels.
    pub fn hidden(&self, tokens: &Tensor, start: &[usize], differentiable: bool) -> Result<Tensor> {
        let (b, t) = tokens.dims2()?;
        self.check_batch(b, t, start, 0)?;
        let mut x = self.embed_tokens(tokens)?;
        let mut ctx = Ctx::new(self, start, 0, t, false)?;
        let layers = self.cfg.layers;
        for (i, block) in self.blocks.iter().enumerate() {
            // Below the lowest trainable weight nothing needs a gradient: fused kernels there.
            ctx.differentiable = differentiable && (self.trainable.embedding || self.trainable.block(i, layers));
            x = self.block(block, &x, &ctx, None)?;
        }
        ctx.differentiable = differentiable;
        Ok(ctx.rms_norm(&x, &self.norm, self.cfg.rms_eps)?)
    }

    /// Logits `[.., V]` of hidden states `[.., d]` through the tied head.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        Ok(hidden.broadcast_matmul(&self.embed.t()?)?)
    }

    /// Logits `[B, R, V]` that predict columns `from .. from + R` of token rows `[B, T]`
    /// (positions `from − 1 .. from + R − 2`); only those rows go through the head.
    pub fn logits_of(&self, tokens: &Tensor, start: &[usize], from: usize, differentiable: bool) -> Result<Tensor> {
        let (_, t) = tokens.dims2()?;
        if from == 0 || from > t {
            return Err(Error::InvalidConfig { name: "from", value: from.to_string(), why: "must be in 1..=T" });
        }
        let inputs = tokens.narrow(1, 0, t - 1)?;
        let h = self.hidden(&inputs, start, differentiable)?.narrow(1, from - 1, t - from)?.contiguous()?;
        self.logits(&h)
    }

    /// An empty cache for a batch whose row b starts at column `start[b]`.
    pub fn new_cache(&self, start: Vec<usize>) -> KvCache {
        KvCache { k: vec![None; self.cfg.layers], v: vec![None; self.cfg.layers], start, len: 0 }
    }

    /// Appends token columns `[B, t]` to the cache and returns the logits `[B, V]` of the last
    /// one (f32, no gradient).
    pub fn extend(&self, tokens: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        let (b, t) = tokens.dims2()?;
        self.check_batch(b, t, &cache.start, cache.len)?;
        let mut x = self.embed_tokens(tokens)?.detach();
        let ctx = Ctx::new(self, &cache.start, cache.len, t, false)?;
        for (i, block) in self.blocks.iter().enumerate() {
            x = self.block(block, &x, &ctx, Some((&mut cache.k[i], &mut cache.v[i])))?.detach();
        }
        cache.len += t;
        let last = x.narrow(1, t - 1, 1)?.squeeze(1)?;
        let h = ctx.rms_norm(&last, &self.norm, self.cfg.rms_eps)?;
        Ok(self.logits(&h)?.detach())
    }

    /// Embeddings `[B, T, d]` of token ids `[B, T]`; an id outside the vocabulary is an error.
    fn embed_tokens(&self, tokens: &Tensor) -> Result<Tensor> {
        let (b, t) = tokens.dims2()?;
        let flat = tokens.flatten_all()?;
        let ids = flat.to_dtype(DType::U32)?.to_vec1::<u32>()?;
        if let Some(i) = ids.iter().position(|&id| id as usize >= self.cfg.vocab) {
            return Err(Error::TargetOutOfRange { token: i, target: ids[i], vocab: self.cfg.vocab });
        }
        Ok(self.embed.index_select(&flat, 0)?.reshape((b, t, self.cfg.d_model))?)
    }

    fn check_batch(&self, b: usize, t: usize, start: &[usize], past: usize) -> Result<()> {
        if start.len() != b {
            return Err(Error::ShapeMismatch {
                name: "start",
                expected: format!("{b} entries (one per row)"),
                got: start.len().to_string(),
            });
        }
        if t == 0 {
            return Err(Error::ShapeMismatch {
                name: "tokens",
                expected: "at least one column".into(),
                got: "0".into(),
            });
        }
        if past + t > self.cfg.context {
            return Err(Error::PromptTooLong { index: 0, len: past + t, new: 0, context: self.cfg.context });
        }
        if let Some(row) = start.iter().position(|&s| s >= past + t) {
            return Err(Error::ShapeMismatch {
                name: "start",
                expected: format!("row starts before column {}", past + t),
                got: format!("row {row} starts at {}", start[row]),
            });
        }
        Ok(())
    }

    fn block(
        &self,
        blk: &Block,
        x: &Tensor,
        ctx: &Ctx,
        cache: Option<(&mut Option<Tensor>, &mut Option<Tensor>)>,
    ) -> Result<Tensor> {
        let (b, t, d) = x.dims3()?;
        let (h, kvh, dh) = (self.cfg.heads, self.cfg.kv_heads, self.cfg.head_dim());
        let xn = ctx.rms_norm(x, &blk.attn_norm, self.cfg.rms_eps)?;
        let q = blk.q.forward(&xn)?.reshape((b, t, h, dh))?.transpose(1, 2)?.contiguous()?;
        let k = blk.k.forward(&xn)?.reshape((b, t, kvh, dh))?.transpose(1, 2)?.contiguous()?;
        let v = blk.v.forward(&xn)?.reshape((b, t, kvh, dh))?.transpose(1, 2)?.contiguous()?;
        let q = ctx.rope(&q)?;
        let mut k = ctx.rope(&k)?;
        let mut v = v;
        if let Some((ck, cv)) = cache {
            if let (Some(pk), Some(pv)) = (ck.as_ref(), cv.as_ref()) {
                k = Tensor::cat(&[pk, &k], 2)?;
                v = Tensor::cat(&[pv, &v], 2)?;
            }
            // Detached: the weights are variables, so every cached tensor would otherwise keep
            // its whole op history (every earlier step's activations) alive.
            k = k.detach();
            v = v.detach();
            *ck = Some(k.clone());
            *cv = Some(v.clone());
        }
        let tk = k.dim(2)?;
        // Grouped-query attention: each KV head serves heads / kv_heads query heads.
        let rep = h / kvh;
        let (k, v) = if rep == 1 {
            (k, v)
        } else {
            let r = |x: &Tensor| -> candle_core::Result<Tensor> {
                x.unsqueeze(2)?.broadcast_as((b, kvh, rep, tk, dh))?.reshape((b, h, tk, dh))
            };
            (r(&k)?, r(&v)?)
        };
        let scores = (q.matmul(&k.t()?)? * (1.0 / (dh as f64).sqrt()))?.broadcast_add(&ctx.mask)?;
        let att = ctx.softmax(&scores)?;
        let y = att.matmul(&v)?.transpose(1, 2)?.reshape((b, t, d))?;
        let x = (x + blk.o.forward(&y)?)?;
        let xn = ctx.rms_norm(&x, &blk.ffn_norm, self.cfg.rms_eps)?;
        let m = (candle_nn::ops::silu(&blk.gate.forward(&xn)?)? * blk.up.forward(&xn)?)?;
        Ok((x + blk.down.forward(&m)?)?)
    }
}

/// cos and sin of position · θ^(−2i/dh), `[context, dh/2]`, computed in f64.
fn rope_tables(cfg: &LlamaConfig, device: &Device) -> Result<(Tensor, Tensor)> {
    let half = cfg.head_dim() / 2;
    let mut cos = Vec::with_capacity(cfg.context * half);
    let mut sin = Vec::with_capacity(cfg.context * half);
    for p in 0..cfg.context {
        for i in 0..half {
            let a = p as f64 * cfg.rope_theta.powf(-2.0 * i as f64 / cfg.head_dim() as f64);
            cos.push(a.cos() as f32);
            sin.push(a.sin() as f32);
        }
    }
    Ok((Tensor::from_vec(cos, (cfg.context, half), device)?, Tensor::from_vec(sin, (cfg.context, half), device)?))
}

/// What every block of one forward shares: the mask, the per-row rotary tables, the op flavour.
struct Ctx {
    /// Additive mask `[B, 1, t, past + t]`.
    mask: Tensor,
    /// `[B, t, dh/2]`.
    cos: Tensor,
    sin: Tensor,
    differentiable: bool,
}

impl Ctx {
    fn new(m: &Llama, start: &[usize], past: usize, t: usize, differentiable: bool) -> Result<Self> {
        let b = start.len();
        let tk = past + t;
        let mut mask = Vec::with_capacity(b * t * tk);
        let mut pos = Vec::with_capacity(b * t);
        for &s in start {
            for i in 0..t {
                let q = past + i;
                pos.push(q.saturating_sub(s) as u32);
                // A pad query (q < s) sees only itself: finite, and never read.
                mask.extend((0..tk).map(|j| if j <= q && (j >= s || j == q) { 0.0 } else { f32::NEG_INFINITY }));
            }
        }
        let mask = Tensor::from_vec(mask, (b, 1, t, tk), &m.device)?;
        let pos = Tensor::from_vec(pos, b * t, &m.device)?;
        let half = m.cfg.head_dim() / 2;
        let cos = m.cos.index_select(&pos, 0)?.reshape((b, t, half))?;
        let sin = m.sin.index_select(&pos, 0)?.reshape((b, t, half))?;
        Ok(Self { mask, cos, sin, differentiable })
    }

    fn rms_norm(&self, x: &Tensor, w: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
        if self.differentiable {
            candle_nn::ops::rms_norm_slow(x, w, eps as f32)
        } else {
            candle_nn::ops::rms_norm(&x.contiguous()?, w, eps as f32)
        }
    }

    fn softmax(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if self.differentiable {
            candle_nn::ops::softmax(x, D::Minus1)
        } else {
            candle_nn::ops::softmax_last_dim(&x.contiguous()?)
        }
    }

    /// Interleaved rotary embedding of `[B, H, t, dh]`: pairs (x_{2i}, x_{2i+1}) rotate by
    /// position · θ^(−2i/dh).
    fn rope(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if !self.differentiable {
            return candle_nn::rotary_emb::rope_i(&x.contiguous()?, &self.cos, &self.sin);
        }
        let (b, h, t, dh) = x.dims4()?;
        let cos = self.cos.reshape((b, 1, t, dh / 2, 1))?;
        let sin = self.sin.reshape((b, 1, t, dh / 2, 1))?;
        let x = x.reshape((b, h, t, dh / 2, 2))?;
        let x0 = x.narrow(D::Minus1, 0, 1)?;
        let x1 = x.narrow(D::Minus1, 1, 1)?;
        let y0 = (x0.broadcast_mul(&cos)? - x1.broadcast_mul(&sin)?)?;
        let y1 = (x0.broadcast_mul(&sin)? + x1.broadcast_mul(&cos)?)?;
        Tensor::cat(&[y0, y1], D::Minus1)?.reshape((b, h, t, dh))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lm::tiny::{write_tiny_llama, TinySpec};

    /// The cache must not hold op histories: with variable weights every cached tensor would
    /// otherwise keep all earlier steps' activations alive (11 GB resident in a 6-minute
    /// `rlvr analyze` before this was fixed, 1 GB after).
    #[test]
    fn sampling_keeps_no_op_history() {
        let path = std::env::temp_dir().join(format!("rlvr-llama-{}-history.gguf", std::process::id()));
        write_tiny_llama(&path, &TinySpec::default()).unwrap();
        let m = Llama::load(&path, &Device::Cpu).unwrap();
        std::fs::remove_file(&path).unwrap();
        let mut cache = m.new_cache(vec![0, 1]);
        let t = Tensor::from_vec(vec![1u32, 5, 7, 9, 1, 5], (2, 3), &Device::Cpu).unwrap();
        let mut logits = m.extend(&t, &mut cache).unwrap();
        for _ in 0..3 {
            logits = m.extend(&Tensor::from_vec(vec![4u32, 6], (2, 1), &Device::Cpu).unwrap(), &mut cache).unwrap();
        }
        assert!(!logits.track_op());
        assert!(cache.k.iter().chain(&cache.v).flatten().all(|t| !t.track_op()));
        // The differentiable forward does track (it is what training backpropagates through).
        let h = m.hidden(&t, &[0, 1], true).unwrap();
        assert!(h.track_op());
    }
}
