//! Embedding gather and its scatter-add backward (shaders/embedding.wgsl) against CPU references.

mod common;

use common::{check, Case, Input, Rng};
use vlsa_kernels::embedding;

#[test]
fn embedding_gather_and_backward() {
    let mut rng = Rng::new(40);
    for &(vocab, dim, count) in &[(1usize, 1usize, 1usize), (7, 33, 12), (33, 7, 130), (130, 3, 5)] {
        let table = Input::random(&mut rng, &[vocab, dim]);
        // Repeated indices, and the last one out of range (vocab + 3): a zero row, no gradient.
        let mut idx: Vec<usize> = (0..count).map(|_| rng.below(vocab)).collect();
        if count > 1 {
            idx[0] = idx[count - 1];
            idx[count - 1] = vocab + 3;
        }
        let indices = Input::index(&[count], idx);
        let gather_ref = move |x: &[Vec<f64>]| -> Vec<f64> {
            (0..count * dim)
                .map(|g| {
                    let v = x[1][g / dim] as usize;
                    if v < vocab {
                        x[0][v * dim + g % dim]
                    } else {
                        0.0
                    }
                })
                .collect()
        };
        check(
            Case::new(
                format!("embedding [{vocab},{dim}] x {count}"),
                vec![table, indices],
                gather_ref,
                move |gpu, x| {
                    let out = gpu.alloc(count * dim)?;
                    embedding::gather(gpu, &x[0], &x[1], &out, count, dim, vocab)?;
                    Ok(out)
                },
            )
            .backward(
                move |gpu, x, dy| {
                    let dtable = gpu.alloc(vocab * dim)?;
                    embedding::scatter_add_backward(gpu, &x[1], dy, &dtable, count, dim, vocab)?;
                    Ok(vec![Some(dtable), None])
                },
                move |x, dy| {
                    let mut dt = vec![0.0; vocab * dim];
                    for i in 0..count {
                        let v = x[1][i] as usize;
                        if v < vocab {
                            (0..dim).for_each(|d| dt[v * dim + d] += dy[i * dim + d]);
                        }
                    }
                    vec![Some(dt), None]
                },
            ),
        );
    }
}

#[test]
fn embedding_rejects_bad_shapes() {
    let gpu = common::gpu();
    // alloc, not zeros: a clear recorded with no dispatch after it stays pending, and a later
    // upload into the recycled buffer would be wiped by it (see the report on Gpu::write).
    let small = gpu.alloc(6).unwrap();
    let big = gpu.alloc(64).unwrap();
    let msg = |r: vlsa_kernels::Result<()>| r.unwrap_err().to_string();

    let e = msg(embedding::gather(gpu, &big, &small, &big, 7, 2, 4));
    assert!(e.contains("indices") && e.contains("[7]"), "{e}");
    let e = msg(embedding::scatter_add_backward(gpu, &big, &big, &small, 4, 2, 5));
    assert!(e.contains("[5, 2]"), "{e}");
}

#[test]
fn embedding_backward_splits_long_loops_for_llvmpipe() {
    // llvmpipe stops an invocation's loops after 65535 iterations; these shapes would need more.
    let gpu = common::gpu();
    let mut rng = Rng::new(70);
    // Embedding backward over 40000 indices of a 3-row table.
    let (vocab, dim, count) = (3usize, 2usize, 40_000usize);
    let idx: Vec<u32> = (0..count).map(|_| rng.below(vocab) as u32).collect();
    let dy: Vec<f32> = (0..count * dim).map(|i| (i % 5) as f32 * 0.25).collect();
    let mut want = vec![0.0f64; vocab * dim];
    for i in 0..count {
        for d in 0..dim {
            want[idx[i] as usize * dim + d] += dy[i * dim + d] as f64;
        }
    }
    let dtable = gpu.alloc(vocab * dim).unwrap();
    embedding::scatter_add_backward(
        gpu,
        &gpu.upload(&idx).unwrap(),
        &gpu.upload(&dy).unwrap(),
        &dtable,
        count,
        dim,
        vocab,
    )
    .unwrap();
    common::assert_close("embedding backward 40000 indices", &gpu.download(&dtable).unwrap(), &want, 1e-6, 0.0);
}
