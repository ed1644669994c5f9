//! The fused GRPO loss on the CPU: forward (one pass over each row) and backward (one more
//! pass, dlogits in the logits dtype, into a new buffer or in place).

use crate::config::GrpoConfig;
use crate::element::Element;
use crate::error::Result;
use crate::types::{GrpoForward, GrpoInputs, GrpoSaved};

/// Fused GRPO forward over row-major `[N, V]` logits: per row lse, entropy, logp (and the
/// branch count when `cfg.top_p` is set) from one pass, then ratio, clip flags, KL, per-token
/// loss, the aggregated scalar loss and the per-token scalars the backward needs.
pub fn grpo_forward<E: Element>(
    logits: &[E],
    vocab: usize,
    inputs: &GrpoInputs,
    cfg: &GrpoConfig,
) -> Result<GrpoForward> {
    let _ = (logits, vocab, inputs, cfg);
    todo!("cpu::grpo_forward")
}

/// Backward into a new buffer: dlogits = grad_loss · ∂loss/∂z, in the logits dtype.
/// ∂loss/∂z_tj = (1/T)·[g_t·(δ_{j,y_t} − p_tj) − h_t·p_tj·(ln p_tj + H_t)], masked rows zero.
pub fn grpo_backward<E: Element>(
    logits: &[E],
    vocab: usize,
    targets: &[u32],
    saved: &GrpoSaved,
    temperature: f32,
    grad_loss: f32,
) -> Result<Vec<E>> {
    let mut out = vec![E::from_f32(0.0); logits.len()];
    grpo_backward_into(logits, vocab, targets, saved, temperature, grad_loss, &mut out)?;
    Ok(out)
}

/// Backward into a caller-given buffer of the logits' shape.
pub fn grpo_backward_into<E: Element>(
    logits: &[E],
    vocab: usize,
    targets: &[u32],
    saved: &GrpoSaved,
    temperature: f32,
    grad_loss: f32,
    out: &mut [E],
) -> Result<()> {
    let _ = (logits, vocab, targets, saved, temperature, grad_loss, out);
    todo!("cpu::grpo_backward_into")
}

/// Backward in place: the logits buffer is overwritten with dlogits (saves one `[N, V]` buffer).
pub fn grpo_backward_in_place<E: Element>(
    logits: &mut [E],
    vocab: usize,
    targets: &[u32],
    saved: &GrpoSaved,
    temperature: f32,
    grad_loss: f32,
) -> Result<()> {
    let _ = (logits, vocab, targets, saved, temperature, grad_loss);
    todo!("cpu::grpo_backward_in_place")
}
