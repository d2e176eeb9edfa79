// What every matmul module shares (matmul.wgsl, matmul_subgroup.wgsl): the parameter block, the
// bindings, the store epilogue (bias, accumulate, activation), and the register-block helpers (vec4 slices,
// the k-inner multiply-add of one row, masked stores, scalar loads for any shape). The math and
// the storage conventions are stated at the top of matmul.wgsl.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    batch: u32,
    a_batch: u32,     // elements between batches of A; 0 when broadcast
    b_batch: u32,     // elements between batches of B; 0 when broadcast
    trans_a: u32,
    trans_b: u32,
    accumulate: u32,
    has_bias: u32,    // add bias[j] to every output column j
    k_split: u32,     // tiled: K per split (split-K); splitk_reduce: the number of splits
    keep_product: u32, // with an activation: 1 also stores the bare product in `out` (training),
                       // 0 stores only f(product + bias) in act_out (inference)
}

// The parameter block is read from a storage buffer into a private copy at the top of every
// entry point (`p = params;`), not bound as a uniform block: lavapipe specializes a shader on the
// uniform values its branches and loop bounds read, and when the first launch's values shrink
// the shader enough it keeps doing so, rebuilding the shader at every later launch (about 10 ms
// each for these kernels: measured 12 ms per 512 x 512 x 4 product against 1.2 ms, AMD EPYC
// Zen 4, Mesa 22.3). Storage values are never specialized; the copy keeps every later use a
// register, not a storage load.
@group(0) @binding(0) var<storage, read> params: Params;
var<private> p: Params;
// Scalar views (registers_general, subgroup_general, tiled_general, splitk_reduce, stores).
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
// vec4 views of the same buffers (vec4 kernels); the launcher passes each buffer twice.
@group(0) @binding(4) var<storage, read> a4: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> b4: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read_write> out4: array<vec4<f32>>;
// The per-column bias (every entry point; the launcher binds A there when there is none).
@group(0) @binding(7) var<storage, read> bias: array<f32>;
// The activation epilogue, fixed when the pipeline is built (Gpu::dispatch_specialized): 0 for
// none, else 1 + an activation code of activation.wgsl. A constant, so that a plain product's
// pipeline compiles without it and a Linear+activation pipeline holds only its one activation.
override ACT: u32 = 0u;
// The activation epilogue's output, scalar and vec4 views (the launcher binds `out` there when
// there is no activation: never written then).
@group(0) @binding(8) var<storage, read_write> act_out: array<f32>;
@group(0) @binding(9) var<storage, read_write> act_out4: array<vec4<f32>>;

// The store epilogue shared by every kernel: the product v for out[o] (column j), plus the bias,
// plus the old output when accumulating.
fn epilogue(v: f32, o: u32, j: u32) -> f32 {
    var r = v;
    if (p.has_bias != 0u) {
        r += bias[j];
    }
    if (p.accumulate != 0u) {
        r += out[o];
    }
    return r;
}

// The same for four columns stored as out4[o] (vec4 kernels), with their bias `bv` loaded once
// per block by bias_row (zero without a bias). Each module defines old_out4: the storage
// modules read out4, matmul_texture.wgsl a texture copy of the output made before the launch.
fn epilogue4(v: vec4<f32>, o: u32, bv: vec4<f32>) -> vec4<f32> {
    var r = v + bv;
    if (p.accumulate != 0u) {
        r += old_out4(o);
    }
    return r;
}

// The activation, per component.
fn act4(z: vec4<f32>) -> vec4<f32> {
    let op = ACT - 1u;
    return vec4<f32>(unary_f(op, z.x), unary_f(op, z.y), unary_f(op, z.z), unary_f(op, z.w));
}

// Every kernel's store of output element o (column j) with the product v. With an activation
// (ACT = 1 + op, launched with a bias and without accumulation) act_out gets f(product + bias)
// and, when p.keep_product is set (a backward will run), `out` keeps the bare product, from
// which the backward recomputes f'(product + bias): a Linear, its bias and its activation in one
// pass over the output. Otherwise out gets the epilogue.
fn store1(o: u32, j: u32, v: f32) {
    if (ACT != 0u) {
        if (p.keep_product != 0u) {
            out[o] = v;
        }
        act_out[o] = unary_f(ACT - 1u, v + bias[j]);
        return;
    }
    out[o] = epilogue(v, o, j);
}

// The register-block kernels' store of four columns as out4[o] (bias `bv`). Without
// keep_product (inference) they store f(product + bias) here, one copy of the activation per
// store: only one output is written, and the second store pass is what costs (on lavapipe every
// store is a loop over the SIMD lanes). Measured at the ViT's fc1 (2056 x 768 x 192,
// quick_gelu; Intel Xeon, family 6 model 167): 0.8x the bare store and the act_rows4 loop.
// With keep_product the module's ACT_IN_STORE decides:
// - true (the subgroup kernels, include/matmul_subgroup_blocks.wgsl): both stores here, f from
//   the accumulators. The act_rows4 pass reads the stored product back, and on CPUs where a
//   storage load costs a store-forwarding stall per lane (AMD EPYC family 25 model 1: 0.077
//   G vec4 loads/s, `cargo run --release --example load_paths`) that read cost as much as the
//   product's own loads: fc1 2056 x 768 x 192 with quick_gelu 25.1 ms against 16.5 plain, 19.5
//   in the store (2026-12-04). The price is code size: 16 inlined copies of the activation per
//   entry point, so a gelu pipeline takes lavapipe longer to build (first launch, seconds).
// - false (the register kernels, matmul.wgsl, 32 rows per invocation): the bare product here
//   and f in act_rows4 / act_rows1, where the activation's code appears once.
fn put4(o: u32, bv: vec4<f32>, v: vec4<f32>) {
    if (ACT != 0u) {
        if (p.keep_product != 0u) {
            out4[o] = v;
            if (ACT_IN_STORE) {
                act_out4[o] = act4(v + bv);
            }
        } else {
            act_out4[o] = act4(v + bv);
        }
        return;
    }
    out4[o] = epilogue4(v, o, bv);
}

// The same for one element (registers_general, subgroup_general).
fn put1(o: u32, j: u32, v: f32) {
    if (ACT != 0u) {
        if (p.keep_product != 0u) {
            out[o] = v;
        } else {
            act_out[o] = unary_f(ACT - 1u, v + bias[j]);
        }
        return;
    }
    out[o] = epilogue(v, o, j);
}

// The activation pass of the register-block kernels, after the block's stores: act_out =
// f(out + bias) over rows row0..row0+rows and columns col0..col0+32 of one batch (base), read
// back from the bare product this invocation has just written (an invocation sees its own
// writes in program order). A loop, so the activation is compiled once, not into each row's
// store (32 copies of erf's fit in registers_nt). Inlined per row, the gelu pipelines were big
// enough that lavapipe's uniform specialization (see the parameter block above) rebuilt them at
// every launch: 2-3x the plain product's time. With the storage parameter block the per-row
// form still costs more than the loop where the store dominates (2048 x 512 x 4, register
// kernel: gelu 3.2-3.5 ms over the plain product, against 0.5-1.6 ms; AMD EPYC Zen 4).
fn act_rows4(base: u32, row0: u32, rows: u32, col0: u32) {
    if (ACT == 0u || p.keep_product == 0u) {
        return;
    }
    // Columns outer, rows inner: each bias vec4 is loaded once per block, not once per row.
    for (var q = 0u; q < 8u; q++) {
        let j = col0 + 4u * q;
        if (j >= p.n) {
            break;
        }
        let b = bias4_at(j);
        for (var r = 0u; r < rows; r++) {
            let i = row0 + r;
            if (i < p.m) {
                let o = (base + i * p.n + j) / 4u;
                act_out4[o] = act4(out4[o] + b);
            }
        }
    }
}

// The same with scalar accesses over cols columns (any N).
fn act_rows1(base: u32, row0: u32, rows: u32, col0: u32, cols: u32) {
    if (ACT == 0u || p.keep_product == 0u) {
        return;
    }
    let op = ACT - 1u;
    for (var c = 0u; c < cols; c++) {
        let j = col0 + c;
        if (j >= p.n) {
            break;
        }
        let b = bias[j];
        for (var r = 0u; r < rows; r++) {
            let i = row0 + r;
            if (i < p.m) {
                let o = base + i * p.n + j;
                act_out[o] = unary_f(op, out[o] + b);
            }
        }
    }
}

// ----- registers path, vec4 kernels -----
//
// One invocation owns a 32 x 32 block of the output: rows row0..row0+32, columns col0..col0+32,
// held as 32 rows of eight vec4 accumulators (c0 .. c31). Per step of 4 along K it loads the
// block's A slice (32 rows x 4 k) and B slice (4 k x 32 columns) as vec4s, 64 vec4 loads for
// 4096 FMAs. On lavapipe every storage load is a loop over the 8 SIMD lanes with a bounds
// check per element, ~30 cycles per element, while an FMA on 8 lanes is one instruction; so
// the larger the block, the faster (measured: 16 x 16 per invocation 2.1, 32 x 32 3.6-4.1,
// 32 x 64 ~5 GFLOP/s per core). Everything is spelled out below with constant indices: the
// same kernel written with loops over rows runs 35% slower (lavapipe keeps the loops).
// The 8 invocations of a workgroup (one SIMD vector) cover LANE_ROWS x LANE_COLS blocks.

const BLOCK_ROWS: u32 = 32u;
const BLOCK_COLS: u32 = 32u;
const LANE_ROWS: u32 = 2u;  // blocks per workgroup along M (both register kernels)
const LANE_COLS: u32 = 4u;  // blocks per workgroup along N

alias Row = array<vec4<f32>, 8>;     // one output row of a block: columns col0 + 4q .. + 4
alias Slice = array<vec4<f32>, 32>;  // A slice: [r] = A[row0 + r, k..k+4]; B slice: [8u + q] = B[k + u, col0 + 4q..]

// c[q] += sum over u of a[u] * B[k + u, col0 + 4q .. + 4], as a chain of `fma`. GPUs fuse
// them; lavapipe (Mesa 22.3) does not: its compiler options lower every ffma into a multiply and
// an add, and the subgroup kernel's JIT code holds no fused instruction (README, "What limits
// lavapipe").
// The 8-10% once measured for `fma` over `x * y + z` (register kernels, Zen 4, one run) was
// therefore not fusion.
fn fma_row(c: ptr<function, Row>, a: vec4<f32>, b: ptr<function, Slice>) {
    let ax = vec4<f32>(a.x);
    let ay = vec4<f32>(a.y);
    let az = vec4<f32>(a.z);
    let aw = vec4<f32>(a.w);
    (*c)[0] = fma(aw, (*b)[24], fma(az, (*b)[16], fma(ay, (*b)[8], fma(ax, (*b)[0], (*c)[0]))));
    (*c)[1] = fma(aw, (*b)[25], fma(az, (*b)[17], fma(ay, (*b)[9], fma(ax, (*b)[1], (*c)[1]))));
    (*c)[2] = fma(aw, (*b)[26], fma(az, (*b)[18], fma(ay, (*b)[10], fma(ax, (*b)[2], (*c)[2]))));
    (*c)[3] = fma(aw, (*b)[27], fma(az, (*b)[19], fma(ay, (*b)[11], fma(ax, (*b)[3], (*c)[3]))));
    (*c)[4] = fma(aw, (*b)[28], fma(az, (*b)[20], fma(ay, (*b)[12], fma(ax, (*b)[4], (*c)[4]))));
    (*c)[5] = fma(aw, (*b)[29], fma(az, (*b)[21], fma(ay, (*b)[13], fma(ax, (*b)[5], (*c)[5]))));
    (*c)[6] = fma(aw, (*b)[30], fma(az, (*b)[22], fma(ay, (*b)[14], fma(ax, (*b)[6], (*c)[6]))));
    (*c)[7] = fma(aw, (*b)[31], fma(az, (*b)[23], fma(ay, (*b)[15], fma(ax, (*b)[7], (*c)[7]))));
}

// A[base][k + u, row] for 4 consecutive rows (trans_a storage), zero when k + u >= K (K tail).
fn a_trow(base: u32, k: u32, row: u32) -> vec4<f32> {
    let v = a4[(base + min(k, p.k - 1u) * p.m + min(row, p.m - 4u)) / 4u];
    return select(vec4<f32>(0.0), v, k < p.k);
}

// The A slice of rows row0..row0+32 at k..k+4: rows past M are clamped (never stored).
fn load_a(s: ptr<function, Slice>, ta: bool, base: u32, row0: u32, k: u32) {
    if (!ta) {
        let last = p.m - 1u;
        (*s)[0] = a4[(base + min(row0 + 0u, last) * p.k + k) / 4u];
        (*s)[1] = a4[(base + min(row0 + 1u, last) * p.k + k) / 4u];
        (*s)[2] = a4[(base + min(row0 + 2u, last) * p.k + k) / 4u];
        (*s)[3] = a4[(base + min(row0 + 3u, last) * p.k + k) / 4u];
        (*s)[4] = a4[(base + min(row0 + 4u, last) * p.k + k) / 4u];
        (*s)[5] = a4[(base + min(row0 + 5u, last) * p.k + k) / 4u];
        (*s)[6] = a4[(base + min(row0 + 6u, last) * p.k + k) / 4u];
        (*s)[7] = a4[(base + min(row0 + 7u, last) * p.k + k) / 4u];
        (*s)[8] = a4[(base + min(row0 + 8u, last) * p.k + k) / 4u];
        (*s)[9] = a4[(base + min(row0 + 9u, last) * p.k + k) / 4u];
        (*s)[10] = a4[(base + min(row0 + 10u, last) * p.k + k) / 4u];
        (*s)[11] = a4[(base + min(row0 + 11u, last) * p.k + k) / 4u];
        (*s)[12] = a4[(base + min(row0 + 12u, last) * p.k + k) / 4u];
        (*s)[13] = a4[(base + min(row0 + 13u, last) * p.k + k) / 4u];
        (*s)[14] = a4[(base + min(row0 + 14u, last) * p.k + k) / 4u];
        (*s)[15] = a4[(base + min(row0 + 15u, last) * p.k + k) / 4u];
        (*s)[16] = a4[(base + min(row0 + 16u, last) * p.k + k) / 4u];
        (*s)[17] = a4[(base + min(row0 + 17u, last) * p.k + k) / 4u];
        (*s)[18] = a4[(base + min(row0 + 18u, last) * p.k + k) / 4u];
        (*s)[19] = a4[(base + min(row0 + 19u, last) * p.k + k) / 4u];
        (*s)[20] = a4[(base + min(row0 + 20u, last) * p.k + k) / 4u];
        (*s)[21] = a4[(base + min(row0 + 21u, last) * p.k + k) / 4u];
        (*s)[22] = a4[(base + min(row0 + 22u, last) * p.k + k) / 4u];
        (*s)[23] = a4[(base + min(row0 + 23u, last) * p.k + k) / 4u];
        (*s)[24] = a4[(base + min(row0 + 24u, last) * p.k + k) / 4u];
        (*s)[25] = a4[(base + min(row0 + 25u, last) * p.k + k) / 4u];
        (*s)[26] = a4[(base + min(row0 + 26u, last) * p.k + k) / 4u];
        (*s)[27] = a4[(base + min(row0 + 27u, last) * p.k + k) / 4u];
        (*s)[28] = a4[(base + min(row0 + 28u, last) * p.k + k) / 4u];
        (*s)[29] = a4[(base + min(row0 + 29u, last) * p.k + k) / 4u];
        (*s)[30] = a4[(base + min(row0 + 30u, last) * p.k + k) / 4u];
        (*s)[31] = a4[(base + min(row0 + 31u, last) * p.k + k) / 4u];
        return;
    }
    // Stored [K, M]: one vec4 holds 4 rows at one k; transpose each 4 x 4 group.
    { let v0 = a_trow(base, k, row0 + 0u); let v1 = a_trow(base, k + 1u, row0 + 0u); let v2 = a_trow(base, k + 2u, row0 + 0u); let v3 = a_trow(base, k + 3u, row0 + 0u);
      (*s)[0] = vec4<f32>(v0.x, v1.x, v2.x, v3.x); (*s)[1] = vec4<f32>(v0.y, v1.y, v2.y, v3.y); (*s)[2] = vec4<f32>(v0.z, v1.z, v2.z, v3.z); (*s)[3] = vec4<f32>(v0.w, v1.w, v2.w, v3.w); }
    { let v0 = a_trow(base, k, row0 + 4u); let v1 = a_trow(base, k + 1u, row0 + 4u); let v2 = a_trow(base, k + 2u, row0 + 4u); let v3 = a_trow(base, k + 3u, row0 + 4u);
      (*s)[4] = vec4<f32>(v0.x, v1.x, v2.x, v3.x); (*s)[5] = vec4<f32>(v0.y, v1.y, v2.y, v3.y); (*s)[6] = vec4<f32>(v0.z, v1.z, v2.z, v3.z); (*s)[7] = vec4<f32>(v0.w, v1.w, v2.w, v3.w); }
    { let v0 = a_trow(base, k, row0 + 8u); let v1 = a_trow(base, k + 1u, row0 + 8u); let v2 = a_trow(base, k + 2u, row0 + 8u); let v3 = a_trow(base, k + 3u, row0 + 8u);
      (*s)[8] = vec4<f32>(v0.x, v1.x, v2.x, v3.x); (*s)[9] = vec4<f32>(v0.y, v1.y, v2.y, v3.y); (*s)[10] = vec4<f32>(v0.z, v1.z, v2.z, v3.z); (*s)[11] = vec4<f32>(v0.w, v1.w, v2.w, v3.w); }
    { let v0 = a_trow(base, k, row0 + 12u); let v1 = a_trow(base, k + 1u, row0 + 12u); let v2 = a_trow(base, k + 2u, row0 + 12u); let v3 = a_trow(base, k + 3u, row0 + 12u);
      (*s)[12] = vec4<f32>(v0.x, v1.x, v2.x, v3.x); (*s)[13] = vec4<f32>(v0.y, v1.y, v2.y, v3.y); (*s)[14] = vec4<f32>(v0.z, v1.z, v2.z, v3.z); (*s)[15] = vec4<f32>(v0.w, v1.w, v2.w, v3.w); }
    { let v0 = a_trow(base, k, row0 + 16u); let v1 = a_trow(base, k + 1u, row0 + 16u); let v2 = a_trow(base, k + 2u, row0 + 16u); let v3 = a_trow(base, k + 3u, row0 + 16u);
      (*s)[16] = vec4<f32>(v0.x, v1.x, v2.x, v3.x); (*s)[17] = vec4<f32>(v0.y, v1.y, v2.y, v3.y); (*s)[18] = vec4<f32>(v0.z, v1.z, v2.z, v3.z); (*s)[19] = vec4<f32>(v0.w, v1.w, v2.w, v3.w); }
    { let v0 = a_trow(base, k, row0 + 20u); let v1 = a_trow(base, k + 1u, row0 + 20u); let v2 = a_trow(base, k + 2u, row0 + 20u); let v3 = a_trow(base, k + 3u, row0 + 20u);
      (*s)[20] = vec4<f32>(v0.x, v1.x, v2.x, v3.x); (*s)[21] = vec4<f32>(v0.y, v1.y, v2.y, v3.y); (*s)[22] = vec4<f32>(v0.z, v1.z, v2.z, v3.z); (*s)[23] = vec4<f32>(v0.w, v1.w, v2.w, v3.w); }
    { let v0 = a_trow(base, k, row0 + 24u); let v1 = a_trow(base, k + 1u, row0 + 24u); let v2 = a_trow(base, k + 2u, row0 + 24u); let v3 = a_trow(base, k + 3u, row0 + 24u);
      (*s)[24] = vec4<f32>(v0.x, v1.x, v2.x, v3.x); (*s)[25] = vec4<f32>(v0.y, v1.y, v2.y, v3.y); (*s)[26] = vec4<f32>(v0.z, v1.z, v2.z, v3.z); (*s)[27] = vec4<f32>(v0.w, v1.w, v2.w, v3.w); }
    { let v0 = a_trow(base, k, row0 + 28u); let v1 = a_trow(base, k + 1u, row0 + 28u); let v2 = a_trow(base, k + 2u, row0 + 28u); let v3 = a_trow(base, k + 3u, row0 + 28u);
      (*s)[28] = vec4<f32>(v0.x, v1.x, v2.x, v3.x); (*s)[29] = vec4<f32>(v0.y, v1.y, v2.y, v3.y); (*s)[30] = vec4<f32>(v0.z, v1.z, v2.z, v3.z); (*s)[31] = vec4<f32>(v0.w, v1.w, v2.w, v3.w); }
}

// The B slice of k..k+4 and columns col0..col0+32; columns past N are clamped (never stored).
// A K tail (tn only) reads a clamped row: A's zeros make it harmless.
fn load_b(s: ptr<function, Slice>, tb: bool, base: u32, k: u32, col0: u32) {
    if (!tb) {
        let last = p.k - 1u;
        (*s)[0] = b4[(base + min(k + 0u, last) * p.n + min(col0 + 0u, p.n - 4u)) / 4u];
        (*s)[1] = b4[(base + min(k + 0u, last) * p.n + min(col0 + 4u, p.n - 4u)) / 4u];
        (*s)[2] = b4[(base + min(k + 0u, last) * p.n + min(col0 + 8u, p.n - 4u)) / 4u];
        (*s)[3] = b4[(base + min(k + 0u, last) * p.n + min(col0 + 12u, p.n - 4u)) / 4u];
        (*s)[4] = b4[(base + min(k + 0u, last) * p.n + min(col0 + 16u, p.n - 4u)) / 4u];
        (*s)[5] = b4[(base + min(k + 0u, last) * p.n + min(col0 + 20u, p.n - 4u)) / 4u];
        (*s)[6] = b4[(base + min(k + 0u, last) * p.n + min(col0 + 24u, p.n - 4u)) / 4u];
        (*s)[7] = b4[(base + min(k + 0u, last) * p.n + min(col0 + 28u, p.n - 4u)) / 4u];
        (*s)[8] = b4[(base + min(k + 1u, last) * p.n + min(col0 + 0u, p.n - 4u)) / 4u];
        (*s)[9] = b4[(base + min(k + 1u, last) * p.n + min(col0 + 4u, p.n - 4u)) / 4u];
        (*s)[10] = b4[(base + min(k + 1u, last) * p.n + min(col0 + 8u, p.n - 4u)) / 4u];
        (*s)[11] = b4[(base + min(k + 1u, last) * p.n + min(col0 + 12u, p.n - 4u)) / 4u];
        (*s)[12] = b4[(base + min(k + 1u, last) * p.n + min(col0 + 16u, p.n - 4u)) / 4u];
        (*s)[13] = b4[(base + min(k + 1u, last) * p.n + min(col0 + 20u, p.n - 4u)) / 4u];
        (*s)[14] = b4[(base + min(k + 1u, last) * p.n + min(col0 + 24u, p.n - 4u)) / 4u];
        (*s)[15] = b4[(base + min(k + 1u, last) * p.n + min(col0 + 28u, p.n - 4u)) / 4u];
        (*s)[16] = b4[(base + min(k + 2u, last) * p.n + min(col0 + 0u, p.n - 4u)) / 4u];
        (*s)[17] = b4[(base + min(k + 2u, last) * p.n + min(col0 + 4u, p.n - 4u)) / 4u];
        (*s)[18] = b4[(base + min(k + 2u, last) * p.n + min(col0 + 8u, p.n - 4u)) / 4u];
        (*s)[19] = b4[(base + min(k + 2u, last) * p.n + min(col0 + 12u, p.n - 4u)) / 4u];
        (*s)[20] = b4[(base + min(k + 2u, last) * p.n + min(col0 + 16u, p.n - 4u)) / 4u];
        (*s)[21] = b4[(base + min(k + 2u, last) * p.n + min(col0 + 20u, p.n - 4u)) / 4u];
        (*s)[22] = b4[(base + min(k + 2u, last) * p.n + min(col0 + 24u, p.n - 4u)) / 4u];
        (*s)[23] = b4[(base + min(k + 2u, last) * p.n + min(col0 + 28u, p.n - 4u)) / 4u];
        (*s)[24] = b4[(base + min(k + 3u, last) * p.n + min(col0 + 0u, p.n - 4u)) / 4u];
        (*s)[25] = b4[(base + min(k + 3u, last) * p.n + min(col0 + 4u, p.n - 4u)) / 4u];
        (*s)[26] = b4[(base + min(k + 3u, last) * p.n + min(col0 + 8u, p.n - 4u)) / 4u];
        (*s)[27] = b4[(base + min(k + 3u, last) * p.n + min(col0 + 12u, p.n - 4u)) / 4u];
        (*s)[28] = b4[(base + min(k + 3u, last) * p.n + min(col0 + 16u, p.n - 4u)) / 4u];
        (*s)[29] = b4[(base + min(k + 3u, last) * p.n + min(col0 + 20u, p.n - 4u)) / 4u];
        (*s)[30] = b4[(base + min(k + 3u, last) * p.n + min(col0 + 24u, p.n - 4u)) / 4u];
        (*s)[31] = b4[(base + min(k + 3u, last) * p.n + min(col0 + 28u, p.n - 4u)) / 4u];
        return;
    }
    // Stored [N, K]: one vec4 holds 4 k of one column; transpose each 4 x 4 group.
    let last = p.n - 1u;
    { let v0 = b4[(base + min(col0 + 0u, last) * p.k + k) / 4u]; let v1 = b4[(base + min(col0 + 1u, last) * p.k + k) / 4u]; let v2 = b4[(base + min(col0 + 2u, last) * p.k + k) / 4u]; let v3 = b4[(base + min(col0 + 3u, last) * p.k + k) / 4u];
      (*s)[0] = vec4<f32>(v0.x, v1.x, v2.x, v3.x); (*s)[8] = vec4<f32>(v0.y, v1.y, v2.y, v3.y); (*s)[16] = vec4<f32>(v0.z, v1.z, v2.z, v3.z); (*s)[24] = vec4<f32>(v0.w, v1.w, v2.w, v3.w); }
    { let v0 = b4[(base + min(col0 + 4u, last) * p.k + k) / 4u]; let v1 = b4[(base + min(col0 + 5u, last) * p.k + k) / 4u]; let v2 = b4[(base + min(col0 + 6u, last) * p.k + k) / 4u]; let v3 = b4[(base + min(col0 + 7u, last) * p.k + k) / 4u];
      (*s)[1] = vec4<f32>(v0.x, v1.x, v2.x, v3.x); (*s)[9] = vec4<f32>(v0.y, v1.y, v2.y, v3.y); (*s)[17] = vec4<f32>(v0.z, v1.z, v2.z, v3.z); (*s)[25] = vec4<f32>(v0.w, v1.w, v2.w, v3.w); }
    { let v0 = b4[(base + min(col0 + 8u, last) * p.k + k) / 4u]; let v1 = b4[(base + min(col0 + 9u, last) * p.k + k) / 4u]; let v2 = b4[(base + min(col0 + 10u, last) * p.k + k) / 4u]; let v3 = b4[(base + min(col0 + 11u, last) * p.k + k) / 4u];
      (*s)[2] = vec4<f32>(v0.x, v1.x, v2.x, v3.x); (*s)[10] = vec4<f32>(v0.y, v1.y, v2.y, v3.y); (*s)[18] = vec4<f32>(v0.z, v1.z, v2.z, v3.z); (*s)[26] = vec4<f32>(v0.w, v1.w, v2.w, v3.w); }
    { let v0 = b4[(base + min(col0 + 12u, last) * p.k + k) / 4u]; let v1 = b4[(base + min(col0 + 13u, last) * p.k + k) / 4u]; let v2 = b4[(base + min(col0 + 14u, last) * p.k + k) / 4u]; let v3 = b4[(base + min(col0 + 15u, last) * p.k + k) / 4u];
      (*s)[3] = vec4<f32>(v0.x, v1.x, v2.x, v3.x); (*s)[11] = vec4<f32>(v0.y, v1.y, v2.y, v3.y); (*s)[19] = vec4<f32>(v0.z, v1.z, v2.z, v3.z); (*s)[27] = vec4<f32>(v0.w, v1.w, v2.w, v3.w); }
    { let v0 = b4[(base + min(col0 + 16u, last) * p.k + k) / 4u]; let v1 = b4[(base + min(col0 + 17u, last) * p.k + k) / 4u]; let v2 = b4[(base + min(col0 + 18u, last) * p.k + k) / 4u]; let v3 = b4[(base + min(col0 + 19u, last) * p.k + k) / 4u];
      (*s)[4] = vec4<f32>(v0.x, v1.x, v2.x, v3.x); (*s)[12] = vec4<f32>(v0.y, v1.y, v2.y, v3.y); (*s)[20] = vec4<f32>(v0.z, v1.z, v2.z, v3.z); (*s)[28] = vec4<f32>(v0.w, v1.w, v2.w, v3.w); }
    { let v0 = b4[(base + min(col0 + 20u, last) * p.k + k) / 4u]; let v1 = b4[(base + min(col0 + 21u, last) * p.k + k) / 4u]; let v2 = b4[(base + min(col0 + 22u, last) * p.k + k) / 4u]; let v3 = b4[(base + min(col0 + 23u, last) * p.k + k) / 4u];
      (*s)[5] = vec4<f32>(v0.x, v1.x, v2.x, v3.x); (*s)[13] = vec4<f32>(v0.y, v1.y, v2.y, v3.y); (*s)[21] = vec4<f32>(v0.z, v1.z, v2.z, v3.z); (*s)[29] = vec4<f32>(v0.w, v1.w, v2.w, v3.w); }
    { let v0 = b4[(base + min(col0 + 24u, last) * p.k + k) / 4u]; let v1 = b4[(base + min(col0 + 25u, last) * p.k + k) / 4u]; let v2 = b4[(base + min(col0 + 26u, last) * p.k + k) / 4u]; let v3 = b4[(base + min(col0 + 27u, last) * p.k + k) / 4u];
      (*s)[6] = vec4<f32>(v0.x, v1.x, v2.x, v3.x); (*s)[14] = vec4<f32>(v0.y, v1.y, v2.y, v3.y); (*s)[22] = vec4<f32>(v0.z, v1.z, v2.z, v3.z); (*s)[30] = vec4<f32>(v0.w, v1.w, v2.w, v3.w); }
    { let v0 = b4[(base + min(col0 + 28u, last) * p.k + k) / 4u]; let v1 = b4[(base + min(col0 + 29u, last) * p.k + k) / 4u]; let v2 = b4[(base + min(col0 + 30u, last) * p.k + k) / 4u]; let v3 = b4[(base + min(col0 + 31u, last) * p.k + k) / 4u];
      (*s)[7] = vec4<f32>(v0.x, v1.x, v2.x, v3.x); (*s)[15] = vec4<f32>(v0.y, v1.y, v2.y, v3.y); (*s)[23] = vec4<f32>(v0.z, v1.z, v2.z, v3.z); (*s)[31] = vec4<f32>(v0.w, v1.w, v2.w, v3.w); }
}

// The bias of columns col0..col0 + 32 for store_row: loaded once per block, not once per row
// of it (every storage load is a loop over the SIMD lanes on lavapipe, and a block of 8 or 32
// rows loaded its bias 8 or 32 times). Zero without a bias, and with an activation that keeps
// the product in a module without ACT_IN_STORE, whose pass (act_rows4) adds the bias itself;
// columns past N are clamped (never stored).
fn bias_row(col0: u32) -> Row {
    var r: Row;
    if (p.has_bias != 0u && (ACT == 0u || p.keep_product == 0u || ACT_IN_STORE)) {
        r[0] = bias4_at(col0); r[1] = bias4_at(col0 + 4u); r[2] = bias4_at(col0 + 8u); r[3] = bias4_at(col0 + 12u);
        r[4] = bias4_at(col0 + 16u); r[5] = bias4_at(col0 + 20u); r[6] = bias4_at(col0 + 24u); r[7] = bias4_at(col0 + 28u);
    }
    return r;
}

fn bias4_at(j: u32) -> vec4<f32> {
    let last = p.n - 1u;
    return vec4<f32>(bias[min(j, last)], bias[min(j + 1u, last)], bias[min(j + 2u, last)], bias[min(j + 3u, last)]);
}

// Writes one accumulated row (masked to the matrix; N is a multiple of 4 here) with the
// block's bias_row `bv`.
fn store_row(c: ptr<function, Row>, bv: ptr<function, Row>, base: u32, row: u32, col0: u32) {
    if (row >= p.m) {
        return;
    }
    let o = (base + row * p.n + col0) / 4u;
    if (col0 + 0u < p.n) { put4(o + 0u, (*bv)[0], (*c)[0]); }
    if (col0 + 4u < p.n) { put4(o + 1u, (*bv)[1], (*c)[1]); }
    if (col0 + 8u < p.n) { put4(o + 2u, (*bv)[2], (*c)[2]); }
    if (col0 + 12u < p.n) { put4(o + 3u, (*bv)[3], (*c)[3]); }
    if (col0 + 16u < p.n) { put4(o + 4u, (*bv)[4], (*c)[4]); }
    if (col0 + 20u < p.n) { put4(o + 5u, (*bv)[5], (*c)[5]); }
    if (col0 + 24u < p.n) { put4(o + 6u, (*bv)[6], (*c)[6]); }
    if (col0 + 28u < p.n) { put4(o + 7u, (*bv)[7], (*c)[7]); }
}


// ----- registers path, any shape -----

const BLOCK: u32 = 16u;     // rows and columns of one registers_general invocation's block

// A[base][i, kk] and B[base][kk, j] for any layout; zero outside the matrix.
fn a_at(base: u32, i: u32, kk: u32) -> f32 {
    let ic = min(i, p.m - 1u);
    let kc = min(kk, p.k - 1u);
    let idx = select(base + ic * p.k + kc, base + kc * p.m + ic, p.trans_a != 0u);
    return select(0.0, a[idx], i < p.m && kk < p.k);
}

fn b_at(base: u32, kk: u32, j: u32) -> f32 {
    let jc = min(j, p.n - 1u);
    let kc = min(kk, p.k - 1u);
    let idx = select(base + kc * p.n + jc, base + jc * p.k + kc, p.trans_b != 0u);
    return select(0.0, b[idx], j < p.n && kk < p.k);
}

// The same tiles from scalar loads (registers_general).
fn a_tile1(base: u32, row: u32, k: u32) -> mat4x4<f32> {
    var t: mat4x4<f32>;
    for (var r = 0u; r < 4u; r++) {
        t[r] = vec4<f32>(a_at(base, row + r, k), a_at(base, row + r, k + 1u), a_at(base, row + r, k + 2u), a_at(base, row + r, k + 3u));
    }
    return t;
}

fn b_tile1(base: u32, k: u32, col: u32) -> mat4x4<f32> {
    var t: mat4x4<f32>;
    for (var q = 0u; q < 4u; q++) {
        t[q] = vec4<f32>(b_at(base, k + q, col), b_at(base, k + q, col + 1u), b_at(base, k + q, col + 2u), b_at(base, k + q, col + 3u));
    }
    return t;
}

// The same with scalar stores (registers_general; an activation follows in act_rows1).
fn store_tile1(base: u32, row: u32, col: u32, t: mat4x4<f32>) {
    for (var r = 0u; r < 4u; r++) {
        let i = row + r;
        for (var c = 0u; c < 4u; c++) {
            if (i < p.m && col + c < p.n) {
                let o = base + i * p.n + col + c;
                put1(o, col + c, t[r][c]);
            }
        }
    }
}
