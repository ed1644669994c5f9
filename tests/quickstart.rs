//! Runs the README's API example (examples/quickstart.rs) and checks what it computes: the
//! example must keep compiling and working as the API changes.

#[allow(dead_code)] // its `main` is only used as an example binary
#[path = "../examples/quickstart.rs"]
mod quickstart;

use candle_core::DType;

#[test]
fn quickstart_runs_and_gives_sane_values() {
    let q = quickstart::run().expect("the example runs");
    // Logits N(0, 3²) over V = 1000: the entropy lies strictly between 0 and ln V, the branching
    // factor between 1 and V; the loss is finite; dlogits has the logits' shape and dtype.
    assert!(q.mean_entropy > 0.0 && q.mean_entropy < (1000f32).ln(), "entropy {}", q.mean_entropy);
    assert!(q.mean_branch >= 1.0 && q.mean_branch <= 1000.0, "branch {}", q.mean_branch);
    assert!(q.loss.is_finite(), "loss {}", q.loss);
    assert_eq!(q.dlogits.dims(), &[8, 6, 1000]);
    assert_eq!(q.dlogits.dtype(), DType::BF16);
    let g: Vec<f32> = q.dlogits.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    assert!(g.iter().all(|x| x.is_finite()) && g.iter().any(|&x| x != 0.0), "dlogits finite and not all zero");
}
