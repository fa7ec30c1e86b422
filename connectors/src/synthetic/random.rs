//! The portable pseudo-random numbers behind the traffic: SplitMix64 (its output never changes
//! with a crate version, so the same seed gives the same bytes forever) and a cumulative
//! distribution for Zipf-like choices.

/// SplitMix64: a small, fast, portable generator (its output never changes with a crate version).
#[derive(Clone, Debug)]
pub(super) struct SplitMix64 {
    pub(super) state: u64,
}

impl SplitMix64 {
    pub(super) fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    pub(super) fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix64(self.state)
    }

    /// Uniform in `[0, 1)`.
    pub(super) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `[0, n)` (0 when `n` is 0).
    pub(super) fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// True with probability `p`.
    pub(super) fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.unit() < p
    }

    /// Exponentially distributed with mean `mean`.
    pub(super) fn exponential(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.unit()).ln()
    }

    /// Standard normal (Box–Muller).
    pub(super) fn normal(&mut self) -> f64 {
        let radius = (-2.0 * (1.0 - self.unit()).ln()).sqrt();
        radius * (std::f64::consts::TAU * self.unit()).cos()
    }
}

/// The SplitMix64 finaliser: a good 64-bit mix.
pub(super) fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A discrete distribution sampled by binary search over its cumulative weights.
#[derive(Clone, Debug)]
pub(super) struct Cumulative {
    /// Cumulative weights, normalised so the last is 1.
    pub(super) cdf: Vec<f64>,
}

impl Cumulative {
    pub(super) fn from_weights(weights: impl IntoIterator<Item = f64>) -> Self {
        let mut total = 0.0;
        let mut cdf: Vec<f64> = weights
            .into_iter()
            .map(|weight| {
                total += weight;
                total
            })
            .collect();
        for value in &mut cdf {
            *value /= total;
        }
        Cumulative { cdf }
    }

    /// Zipf over `n` ranks: rank `i` has weight `1 / (i + 1)^s`.
    pub(super) fn zipf(n: u32, exponent: f64) -> Self {
        Self::from_weights((0..n).map(|rank| 1.0 / f64::from(rank + 1).powf(exponent)))
    }

    /// An index in `[0, len)`.
    pub(super) fn sample(&self, rng: &mut SplitMix64) -> u32 {
        let u = rng.unit();
        let index = self.cdf.partition_point(|&c| c <= u);
        u32::try_from(index.min(self.cdf.len().saturating_sub(1))).unwrap_or(0)
    }
}
