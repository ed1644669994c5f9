//! A CPU model of how `kernels/grpo.cu`'s `backward_row` walks a row, tested on machines without a
//! GPU (the kernel itself is tested on a GPU by `tests/cuda_grpo.rs`): the split of a row that
//! starts at any address into `head` scalar elements, 16-byte vectors and a scalar tail
//! (`RowSplit` of common.cuh), the per-thread assignment of each part over U-vector iterations in
//! forward or reverse order, and the target test `j == yv && i == ylane` of the vector path.
//! Property: every element of the row is written exactly once, and exactly one write (the
//! target's, when y < V) takes the target formula; no write lands outside [0, V).

use proptest::prelude::*;

/// Threads per CTA of `backward_row` (ROW_BLOCK in kernels/common.cuh, src/cuda/context.rs).
const BLOCK: u32 = 512;
const U: u32 = 4;

/// `RowSplit`: `mis` is the row's start address modulo 16 (a multiple of the element size).
struct Split {
    head: u32,
    nvec: u32,
    tail_start: u32,
}

fn split(vocab: u32, elem: u32, mis: u32) -> Split {
    let vec = 16 / elem;
    let head = if mis == 0 { 0 } else { vocab.min((16 - mis) / elem) };
    let nvec = (vocab - head) / vec;
    Split { head, nvec, tail_start: head + nvec * vec }
}

/// For each element j of the row: how many times it is written, and how many of those writes use
/// the target formula.
fn writes(vocab: u32, elem: u32, mis: u32, y: u32, reverse: bool) -> (Vec<u32>, Vec<u32>) {
    let vec = 16 / elem;
    let s = split(vocab, elem, mis);
    let (mut count, mut target) = (vec![0u32; vocab as usize], vec![0u32; vocab as usize]);
    let mut write = |j: u32, is_target: bool| {
        assert!(j < vocab, "write outside the row: {j} >= {vocab}");
        count[j as usize] += 1;
        target[j as usize] += is_target as u32;
    };
    let tail = vocab - s.tail_start;
    for tid in 0..BLOCK {
        if tid < s.head {
            write(tid, tid == y);
        }
        if tid >= s.head && tid < s.head + tail {
            let j = s.tail_start + tid - s.head;
            write(j, j == y);
        }
    }
    let yv = if y >= s.head && y < s.tail_start { (y - s.head) / vec } else { u32::MAX };
    let ylane = y.wrapping_sub(s.head) % vec;
    let step = U * BLOCK;
    let iters = s.nvec.div_ceil(step);
    for it in 0..iters {
        let base = if reverse { iters - 1 - it } else { it } * step;
        for u in 0..U {
            for tid in 0..BLOCK {
                let j = base + u * BLOCK + tid;
                if j >= s.nvec {
                    continue;
                }
                for i in 0..vec {
                    write(s.head + j * vec + i, j == yv && i == ylane);
                }
            }
        }
    }
    (count, target)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(1000)
    ))]

    /// Every element once, the target formula exactly at y (none for y >= V), for f32 and 16-bit
    /// elements, every alignment, V from 1 to past one U·1024-vector iteration, both orders.
    #[test]
    fn backward_row_covers_each_element_once(
        vocab in prop_oneof![1u32..40, 40u32..5000, 32760u32..32800, 65530u32..70000],
        wide in any::<bool>(),
        mis_steps in 0u32..8,
        y_pick in any::<u32>(),
        bad_target in prop::bool::weighted(0.1),
        reverse in any::<bool>(),
    ) {
        let elem = if wide { 4 } else { 2 };
        let mis = (mis_steps * elem) % 16;
        let y = if bad_target { vocab + y_pick % 3 } else { y_pick % vocab };
        let (count, target) = writes(vocab, elem, mis, y, reverse);
        prop_assert!(count.iter().all(|&c| c == 1), "an element is written {:?} times", count.iter().max());
        let targets: u32 = target.iter().sum();
        if y < vocab {
            prop_assert_eq!(targets, 1);
            prop_assert_eq!(target[y as usize], 1);
        } else {
            prop_assert_eq!(targets, 0);
        }
        // The scalar parts fit the single pass of threads over them.
        let s = split(vocab, elem, mis);
        prop_assert!(s.head + (vocab - s.tail_start) <= BLOCK);
    }
}
