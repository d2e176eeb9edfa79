//! Seeded random numbers for everything in vlsa that needs them: weight initialisation,
//! synthetic data, training's shuffles and augmentations, profiling inputs, and the random inputs
//! of tests, benches and examples. No dependency, and the same seed gives the same numbers on
//! every platform (integer arithmetic only, up to the final conversion to a float).
//!
//! Two bit sources, each kept because a seeded stream that users see depends on it:
//! - [`XorShift64Star`] (the default, [`Rng::new`]): `Model::init`'s weights (so
//!   `vlsa init --seed N` keeps giving the same model), profiling inputs, and the random inputs
//!   of tests, benches and examples;
//! - [`SplitMix64`] ([`Rng::splitmix`], [`Rng::from_path`]): synthetic data sets (`vlsa synth`)
//!   and training's data order and augmentation (a resumed run redraws exactly the batches of an
//!   uninterrupted one). Any state is a good SplitMix64 state, which makes it the one to derive
//!   independent streams with.
//!
//! [`Rng`] turns either source into the values callers want (uniform, ranges, integers, coins,
//! normals). Nothing here is fit for cryptography.

/// A source of 64 random bits at a time.
pub trait Source {
    /// The next 64 random bits.
    fn next_u64(&mut self) -> u64;
}

/// The golden-ratio increment of SplitMix64 (and the seed scrambler of [`XorShift64Star::new`]).
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64's output function: a bijective mix of 64 bits.
pub fn splitmix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// SplitMix64 (Steele, Lea and Flood 2014): a counter advanced by the golden ratio, then mixed.
/// Any state, zero included, is a good one, which makes it the generator to derive streams with.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator whose state is `state`.
    pub fn new(state: u64) -> SplitMix64 {
        SplitMix64(state)
    }
}

impl Source for SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GOLDEN);
        splitmix(self.0)
    }
}

/// xorshift64* (Vigna 2016): three shifts, then a multiply for the output. Its state must not be
/// zero, so constructors force the lowest bit on.
#[derive(Debug, Clone)]
pub struct XorShift64Star(u64);

impl XorShift64Star {
    /// A generator seeded with `seed` (any value; the seed is scrambled first).
    pub fn new(seed: u64) -> XorShift64Star {
        XorShift64Star(seed.wrapping_mul(GOLDEN) | 1)
    }

    /// A generator whose state is `state` with the lowest bit forced on.
    pub fn from_state(state: u64) -> XorShift64Star {
        XorShift64Star(state | 1)
    }
}

impl Source for XorShift64Star {
    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// Random values of the usual kinds, drawn from a bit source (xorshift64* unless said otherwise).
#[derive(Debug, Clone)]
pub struct Rng<S: Source = XorShift64Star>(S);

impl Rng<XorShift64Star> {
    /// An xorshift64* stream seeded with `seed` (any value).
    pub fn new(seed: u64) -> Rng {
        Rng(XorShift64Star::new(seed))
    }
}

impl Rng<SplitMix64> {
    /// A SplitMix64 stream whose state is `state`.
    pub fn splitmix(state: u64) -> Rng<SplitMix64> {
        Rng(SplitMix64::new(state))
    }

    /// An independent SplitMix64 stream for `seed` and a path of stream identifiers (image index,
    /// purpose, ...): each identifier is mixed into the state in turn.
    pub fn from_path(seed: u64, path: &[u64]) -> Rng<SplitMix64> {
        let mut s = splitmix(seed ^ 0x05EE_D0F5_1A70);
        for &p in path {
            s = splitmix(s ^ splitmix(p.wrapping_add(GOLDEN)));
        }
        Rng(SplitMix64::new(s))
    }
}

impl<S: Source> Rng<S> {
    /// Random values drawn from `source`.
    pub fn from_source(source: S) -> Rng<S> {
        Rng(source)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in [0, 1), from the top 24 bits (every value is exact in f32).
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Uniform in (0, 1), from the top 53 bits, centred in its bin: never 0, so `ln` is finite.
    pub fn uniform_open_f64(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.uniform()
    }

    /// `n` values uniform in [-1, 1).
    pub fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.range(-1.0, 1.0)).collect()
    }

    /// Uniform integer in [0, n) (n > 0), from the top 53 bits.
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() >> 11) % n as u64) as usize
    }

    /// True with probability one half (the top bit).
    pub fn coin(&mut self) -> bool {
        self.next_u64() >> 63 == 1
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f32) -> bool {
        self.uniform() < p
    }

    /// Log-uniform in [lo, hi) (lo, hi > 0): factors and their inverses equally likely.
    pub fn log_range(&mut self, lo: f32, hi: f32) -> f32 {
        self.range(lo.ln(), hi.ln()).exp()
    }

    /// A standard normal sample in f32 (Box–Muller, one of the pair).
    pub fn normal(&mut self) -> f32 {
        let u = 1.0 - self.uniform(); // (0, 1]: ln is finite
        let v = self.uniform();
        (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The streams users see are pinned: a change here changes synthetic data sets, training's
    /// batches and initial weights for a given seed.
    #[test]
    fn streams_are_pinned() {
        // SplitMix64 from state 0: the published reference values.
        let mut r = Rng::splitmix(0);
        assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next_u64(), 0x6E78_9E6A_A1B9_65F4);
        // xorshift64* seeded with 1 (state 0x9E37_79B9_7F4A_7C15).
        let mut x = Rng::new(1);
        assert_eq!(x.next_u64(), 0x0D83_B3E2_9A21_487A);
        assert_eq!(x.next_u64(), 0x54C4_4C79_F1FE_9D67);
    }

    #[test]
    fn values_stay_in_their_ranges() {
        let mut r = Rng::from_path(7, &[1, 2]);
        for _ in 0..10_000 {
            let u = r.uniform();
            assert!((0.0..1.0).contains(&u));
            let o = r.uniform_open_f64();
            assert!(o > 0.0 && o < 1.0);
            assert!(r.below(7) < 7);
            assert!(r.normal().is_finite());
        }
    }

    #[test]
    fn paths_give_different_streams() {
        let a = Rng::from_path(1, &[0]).next_u64();
        let b = Rng::from_path(1, &[1]).next_u64();
        let c = Rng::from_path(2, &[0]).next_u64();
        assert!(a != b && a != c && b != c);
    }
}
