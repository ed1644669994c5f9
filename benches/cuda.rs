//! CUDA benchmarks (placeholder while the kernels land).
fn main() {}
