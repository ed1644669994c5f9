//! A tiny decoder-only transformer in candle-nn: token + learned position embeddings, pre-norm
//! blocks (causal multi-head attention, GELU MLP), a final norm and an untied, bias-free LM
//! head onto the padded vocabulary. f32 throughout.
//!
//! Only differentiable candle ops are used: candle-nn's fused `layer_norm` and
//! `softmax_last_dim` have no backward, so the composed `layer_norm_slow` and `softmax` are
//! used instead (the sequences are ~10 tokens, so they cost little next to the LM head). The
//! head has no bias: candle's backward of a bias broadcast over `[B, T, V]` is a strided
//! reduction that cost more than the head's matmul.

use candle_core::{DType, Device, Module, Tensor, Var, D};
use candle_nn::{Embedding, Init, Linear, VarBuilder, VarMap};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::{Error, Result};

/// Shape of the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelConfig {
    /// Vocabulary size V (the LM head's width), padded far beyond the task's tokens.
    pub vocab: usize,
    /// Width d of the residual stream.
    pub d_model: usize,
    /// Transformer blocks.
    pub layers: usize,
    /// Attention heads (must divide `d_model`).
    pub heads: usize,
    /// Longest sequence (prompt + response).
    pub max_len: usize,
}

impl ModelConfig {
    /// Checks that the shape is buildable.
    pub fn validate(&self) -> Result<()> {
        let bad = |name, value: usize, why| Err(Error::InvalidConfig { name, value: value.to_string(), why });
        if self.vocab == 0 {
            return Err(Error::EmptyVocab);
        }
        if self.d_model == 0 || self.layers == 0 || self.max_len == 0 {
            return bad("d_model/layers/max_len", 0, "must be >= 1");
        }
        if self.heads == 0 || !self.d_model.is_multiple_of(self.heads) {
            return bad("heads", self.heads, "must be >= 1 and divide d_model");
        }
        Ok(())
    }
}

/// LayerNorm with learned scale and shift, composed from differentiable ops.
#[derive(Debug, Clone)]
struct Norm {
    weight: Tensor,
    bias: Tensor,
}

impl Norm {
    fn new(d: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        let weight = vb.get_with_hints(d, "weight", Init::Const(1.0))?;
        let bias = vb.get_with_hints(d, "bias", Init::Const(0.0))?;
        Ok(Self { weight, bias })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        candle_nn::ops::layer_norm_slow(x, &self.weight, &self.bias, 1e-5)
    }
}

/// One pre-norm block: x + attn(norm(x)), then x + mlp(norm(x)).
#[derive(Debug, Clone)]
struct Block {
    ln1: Norm,
    qkv: Linear,
    proj: Linear,
    ln2: Norm,
    fc1: Linear,
    fc2: Linear,
    heads: usize,
}

impl Block {
    fn new(d: usize, heads: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            ln1: Norm::new(d, vb.pp("ln1"))?,
            qkv: candle_nn::linear(d, 3 * d, vb.pp("qkv"))?,
            proj: candle_nn::linear(d, d, vb.pp("proj"))?,
            ln2: Norm::new(d, vb.pp("ln2"))?,
            fc1: candle_nn::linear(d, 4 * d, vb.pp("fc1"))?,
            fc2: candle_nn::linear(4 * d, d, vb.pp("fc2"))?,
            heads,
        })
    }

    /// `mask` is the `[T, T]` causal mask (0 on and below the diagonal, −inf above).
    fn forward(&self, x: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
        let (b, t, d) = x.dims3()?;
        let dh = d / self.heads;
        let qkv = self.qkv.forward(&self.ln1.forward(x)?)?.reshape((b, t, 3, self.heads, dh))?;
        // [B, H, T, dh] per projection.
        let split = |i: usize| qkv.narrow(2, i, 1)?.squeeze(2)?.transpose(1, 2)?.contiguous();
        let (q, k, v) = (split(0)?, split(1)?, split(2)?);
        // Scores and mixing as broadcast products and sums, not batched matmuls: B·H matmuls of
        // T×dh are far too small for candle's CPU gemm, whose per-call overhead dominated the
        // whole step; the products here are only B·H·T·T·dh elements.
        let scores = q.unsqueeze(3)?.broadcast_mul(&k.unsqueeze(2)?)?.sum(D::Minus1)?;
        let scores = (scores / (dh as f64).sqrt())?.broadcast_add(mask)?;
        let att = candle_nn::ops::softmax(&scores, D::Minus1)?;
        let y = att.unsqueeze(4)?.broadcast_mul(&v.unsqueeze(2)?)?.sum(3)?;
        let y = y.transpose(1, 2)?.reshape((b, t, d))?;
        let x = (x + self.proj.forward(&y)?)?;
        let h = self.fc1.forward(&self.ln2.forward(&x)?)?.gelu()?;
        x + self.fc2.forward(&h)?
    }
}

/// The policy: the network and the variables that hold its weights.
pub struct Policy {
    varmap: VarMap,
    tok_emb: Embedding,
    pos_emb: Embedding,
    blocks: Vec<Block>,
    ln_f: Norm,
    head: Linear,
    cfg: ModelConfig,
    device: Device,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy").field("cfg", &self.cfg).field("device", &self.device).finish_non_exhaustive()
    }
}

impl Policy {
    /// A freshly initialised model. candle's CPU generator cannot be seeded, so every weight is
    /// then overwritten from a seeded host generator: U(±1/√fan_in) for weight matrices (PyTorch's
    /// default), U(±1) for embeddings, zero biases, unit norms.
    pub fn new(cfg: ModelConfig, device: &Device, seed: u64) -> Result<Self> {
        let policy = Self::build(cfg, device)?;
        let mut rng = StdRng::seed_from_u64(seed);
        for (name, var) in policy.sorted_vars() {
            let dims = var.dims().to_vec();
            let values: Vec<f32> = match dims.as_slice() {
                [_, fan_in] => {
                    // Embeddings at unit scale: with PyTorch's 1/√d they start so small that
                    // learning which positions to attend to took measurably longer.
                    let bound = if name.contains("emb") { 1.0 } else { 1.0 / (*fan_in as f32).sqrt() };
                    (0..var.elem_count()).map(|_| rng.random_range(-bound..bound)).collect()
                }
                _ if name.contains("ln") => continue,
                _ => vec![0.0; var.elem_count()],
            };
            var.set(&Tensor::from_vec(values, dims, device)?)?;
        }
        Ok(policy)
    }

    fn build(cfg: ModelConfig, device: &Device) -> Result<Self> {
        cfg.validate()?;
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
        let d = cfg.d_model;
        let blocks = (0..cfg.layers)
            .map(|i| Block::new(d, cfg.heads, vb.pp(format!("block{i}"))))
            .collect::<candle_core::Result<_>>()?;
        Ok(Self {
            tok_emb: candle_nn::embedding(cfg.vocab, d, vb.pp("tok_emb"))?,
            pos_emb: candle_nn::embedding(cfg.max_len, d, vb.pp("pos_emb"))?,
            blocks,
            ln_f: Norm::new(d, vb.pp("ln_f"))?,
            head: candle_nn::linear_no_bias(d, cfg.vocab, vb.pp("head"))?,
            varmap,
            cfg,
            device: device.clone(),
        })
    }

    /// A deep copy with its own variables (a frozen reference, or a branch point for several
    /// runs from the same checkpoint).
    pub fn deep_copy(&self) -> Result<Self> {
        let copy = Self::build(self.cfg, &self.device)?;
        for ((_, src), (_, dst)) in self.sorted_vars().iter().zip(copy.sorted_vars()) {
            dst.set(&src.as_tensor().copy()?)?;
        }
        Ok(copy)
    }

    /// Writes the weights to a safetensors file.
    pub fn save(&self, path: &std::path::Path) -> Result<()> {
        self.varmap.save(path).map_err(|e| Error::Io { context: path.display().to_string(), msg: e.to_string() })
    }

    /// Reads weights written by [`Policy::save`] for a model of the same shape.
    pub fn load(&mut self, path: &std::path::Path) -> Result<()> {
        self.varmap.load(path).map_err(|e| Error::Io { context: path.display().to_string(), msg: e.to_string() })
    }

    fn sorted_vars(&self) -> Vec<(String, Var)> {
        sorted_vars(&self.varmap)
    }

    /// The trainable variables (for an optimizer).
    pub fn vars(&self) -> Vec<Var> {
        self.sorted_vars().into_iter().map(|(_, v)| v).collect()
    }

    /// The model's shape.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Final hidden states `[B, T, d]` of token ids `[B, T]` (u32), T ≤ `max_len`.
    pub fn hidden(&self, tokens: &Tensor) -> Result<Tensor> {
        let (_, t) = tokens.dims2()?;
        if t > self.cfg.max_len {
            return Err(Error::ShapeMismatch {
                name: "tokens",
                expected: format!("at most {} positions", self.cfg.max_len),
                got: t.to_string(),
            });
        }
        let pos = Tensor::arange(0u32, t as u32, &self.device)?;
        let mut x = self.tok_emb.forward(tokens)?.broadcast_add(&self.pos_emb.forward(&pos)?)?;
        let mask = causal_mask(t, &self.device)?;
        for block in &self.blocks {
            x = block.forward(&x, &mask)?;
        }
        Ok(self.ln_f.forward(&x)?)
    }

    /// LM-head logits `[.., V]` of hidden states `[.., d]`.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        Ok(self.head.forward(hidden)?)
    }

    /// Logits `[B, R, V]` that predict the R response tokens of full sequences `[B, P + R]`
    /// (prompt length P): the positions P − 1 .. P + R − 2. Only those rows go through the LM
    /// head, the one expensive layer.
    pub fn response_logits(&self, seqs: &Tensor, prompt_len: usize) -> Result<Tensor> {
        let (_, total) = seqs.dims2()?;
        let r = total - prompt_len;
        let inputs = seqs.narrow(1, 0, total - 1)?;
        let h = self.hidden(&inputs)?.narrow(1, prompt_len - 1, r)?.contiguous()?;
        self.logits(&h)
    }
}

/// A var map's variables with their names, in name order (a fixed order for optimizers, copies
/// and checkpoints).
pub(crate) fn sorted_vars(varmap: &VarMap) -> Vec<(String, Var)> {
    let data = varmap.data().lock().unwrap_or_else(|e| e.into_inner());
    let mut vars: Vec<(String, Var)> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

fn causal_mask(t: usize, device: &Device) -> Result<Tensor> {
    let mask: Vec<f32> =
        (0..t).flat_map(|i| (0..t).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 })).collect();
    Ok(Tensor::from_vec(mask, (t, t), device)?)
}
