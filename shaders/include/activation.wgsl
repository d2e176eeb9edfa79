// Activations and their derivatives, shared by elementwise.wgsl (unary, bias_act and their
// backward) and the matmul's activation epilogue (matmul_core.wgsl). `op` is the launcher's
// UnaryOp code (kernels/src/elementwise.rs):
//   0 relu, 1 gelu (exact erf), 2 quick_gelu, 3 sigmoid, 4 exp, 5 neg
//     relu'(x)       = 1 if x > 0 else 0
//     gelu(x)        = x Phi(x) = x/2 (1 + erf(x/sqrt 2)),   gelu'(x) = Phi(x) + x phi(x)
//     quick_gelu(x)  = x sigmoid(1.702 x),   quick_gelu'(x) = s + 1.702 x s (1 - s)

const SQRT1_2: f32 = 0.7071067811865476;
const INV_SQRT_2PI: f32 = 0.3989422804014327;

// erf(x) to ~1e-7 absolute (Abramowitz & Stegun 7.1.26 is too coarse for the 1e-4 gradient
// contract; this is the W. J. Cody style rational fit used by many libm's, in f32).
fn erf_f32(x: f32) -> f32 {
    let ax = abs(x);
    var r: f32;
    if (ax < 0.5) {
        // Taylor-like odd polynomial, accurate on [0, 0.5].
        let t = x * x;
        r = ax * (1.1283791670955126 + t * (-0.37612638903183754 + t * (0.11283791670955126
            + t * (-0.026866170645131252 + t * (0.005223977625442188 + t * (-0.0008548327023450852))))));
    } else {
        // erfc(ax) = exp(-ax^2) * P(1/(1+p ax)), from Numerical Recipes' erfcc (rel. err < 1.2e-7).
        let t = 1.0 / (1.0 + 0.5 * ax);
        let y = t * exp(-ax * ax - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418
            + t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587
            + t * (-0.82215223 + t * 0.17087277)))))))));
        r = 1.0 - y;
    }
    return select(r, -r, x < 0.0);
}

fn sigmoid(x: f32) -> f32 {
    return 1.0 / (1.0 + exp(-x));
}

fn unary_f(op: u32, x: f32) -> f32 {
    switch op {
        case 0u: { return max(x, 0.0); }
        case 1u: { return 0.5 * x * (1.0 + erf_f32(x * SQRT1_2)); }
        case 2u: { return x * sigmoid(1.702 * x); }
        case 3u: { return sigmoid(x); }
        case 4u: { return exp(x); }
        default: { return -x; }
    }
}

fn unary_df(op: u32, x: f32) -> f32 {
    switch op {
        case 0u: { return select(0.0, 1.0, x > 0.0); }
        case 1u: { return 0.5 * (1.0 + erf_f32(x * SQRT1_2)) + x * INV_SQRT_2PI * exp(-0.5 * x * x); }
        case 2u: { let s = sigmoid(1.702 * x); return s + 1.702 * x * s * (1.0 - s); }
        case 3u: { let s = sigmoid(x); return s * (1.0 - s); }
        case 4u: { return exp(x); }
        default: { return -1.0; }
    }
}
