use candle_core::{Device, Tensor};
use rlvr_kernels::lm::llama::Llama;
fn main() -> rlvr_kernels::Result<()> {
    bench()?;
    let t0 = std::time::Instant::now();
    let m = Llama::load(std::path::Path::new("models/SmolLM2-135M-Instruct.Q4_1.gguf"), &Device::Cpu)?;
    println!("load {:?}", t0.elapsed());
    let ids: Vec<u32> = vec![504, 3575, 282, 4649, 314];
    let toks = Tensor::from_vec(ids.clone(), (1, 5), &Device::Cpu)?;
    let h = m.hidden(&toks, &[0], true)?;
    let lg = m.logits(&h)?.squeeze(0)?;
    let last = lg.get(4)?.to_vec1::<f32>()?;
    let am = last.iter().enumerate().max_by(|a, b| a.1.partial_cmp(b.1).unwrap()).unwrap();
    println!("argmax {:?}", am);
    // cached
    let mut c = m.new_cache(vec![0]);
    let l1 = m.extend(&toks.narrow(1, 0, 3)?, &mut c)?;
    let l2 = m.extend(&toks.narrow(1, 3, 1)?, &mut c)?;
    let l3 = m.extend(&toks.narrow(1, 4, 1)?, &mut c)?.squeeze(0)?.to_vec1::<f32>()?;
    let d: f32 = last.iter().zip(&l3).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    println!("cache vs full max diff {d}");
    let l1v = l1.squeeze(0)?.to_vec1::<f32>()?; let f2 = lg.get(2)?.to_vec1::<f32>()?;
    println!("pos2 diff {}", l1v.iter().zip(&f2).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max));
    let _ = l2;
    // padded batch: row 1 with 2 pads
    let mut row1 = vec![0u32, 0]; row1.extend(&ids[..3]);
    let mut row0 = ids.clone();
    row0.truncate(5);
    let both = Tensor::from_vec([row0, row1].concat(), (2, 5), &Device::Cpu)?;
    let mut c2 = m.new_cache(vec![0, 2]);
    let lb = m.extend(&both, &mut c2)?;
    let r1 = lb.get(1)?.to_vec1::<f32>()?;
    println!("padded row diff {}", r1.iter().zip(&l1v).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max));
    // timing a decode step at batch 16 with 100 cached
    let toks16 = Tensor::from_vec(vec![504u32; 16 * 60], (16, 60), &Device::Cpu)?;
    let mut c3 = m.new_cache(vec![0; 16]);
    let t1 = std::time::Instant::now();
    m.extend(&toks16, &mut c3)?;
    println!("prefill 16x60 {:?}", t1.elapsed());
    let t2 = std::time::Instant::now();
    for _ in 0..10 { m.extend(&Tensor::from_vec(vec![314u32; 16], (16, 1), &Device::Cpu)?, &mut c3)?; }
    println!("decode step 16 {:?}", t2.elapsed() / 10);
    Ok(())
}
#[allow(dead_code)]
fn bench() -> rlvr_kernels::Result<()> {
    let dev = Device::Cpu;
    let w = Tensor::randn(0f32, 1.0, (49152, 576), &dev)?;
    let x = Tensor::randn(0f32, 1.0, (16, 576), &dev)?;
    let t = std::time::Instant::now();
    for _ in 0..5 { let _ = x.matmul(&w.t()?)?; }
    println!("head 2d t() {:?}", t.elapsed() / 5);
    let wt = w.t()?.contiguous()?;
    let t = std::time::Instant::now();
    for _ in 0..5 { let _ = x.matmul(&wt)?; }
    println!("head 2d contiguous [in,out] {:?}", t.elapsed() / 5);
    let x1 = Tensor::randn(0f32, 1.0, (1, 576), &dev)?;
    let t = std::time::Instant::now();
    for _ in 0..5 { let _ = x1.matmul(&w.t()?)?; }
    println!("head M=1 t() {:?}", t.elapsed() / 5);
    let xb = Tensor::randn(0f32, 1.0, (128, 576), &dev)?;
    let t = std::time::Instant::now();
    for _ in 0..5 { let _ = xb.matmul(&w.t()?)?; }
    println!("head M=128 t() {:?}", t.elapsed() / 5);
    let w2 = Tensor::randn(0f32, 1.0, (1536, 576), &dev)?;
    let x3 = Tensor::randn(0f32, 1.0, (16, 60, 576), &dev)?;
    let t = std::time::Instant::now();
    for _ in 0..5 { let _ = x3.broadcast_matmul(&w2.t()?)?; }
    println!("ffn 3d broadcast {:?}", t.elapsed() / 5);
    let t = std::time::Instant::now();
    for _ in 0..5 { let _ = x3.reshape((960, 576))?.matmul(&w2.t()?)?; }
    println!("ffn 2d {:?}", t.elapsed() / 5);
    let l = candle_nn::Linear::new(w2.clone(), None);
    use candle_core::Module;
    let t = std::time::Instant::now();
    for _ in 0..5 { let _ = l.forward(&x3)?; }
    println!("ffn Linear {:?}", t.elapsed() / 5);
    Ok(())
}
