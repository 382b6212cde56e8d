//! The one pseudo-random generator of the `lanes` command (stress suites, stress
//! schedules, bench inputs): splitmix64, deterministic on every machine.

/// One step of splitmix64: a well-mixed hash of `x`.
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A small deterministic generator (splitmix64 over a counter).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        splitmix64(self.0)
    }

    /// Uniform in `0..n` (`n` ≥ 1).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n.max(1))) >> 64) as u64
    }

    /// In `1..=max`, log-uniform: small values as likely per octave as large ones.
    pub fn log_uniform(&mut self, max: usize) -> usize {
        let max = max.max(1);
        let u = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let v = ((max as f64 + 1.0).ln() * u).exp().floor() as usize;
        v.clamp(1, max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generator_is_deterministic_and_in_range() {
        let mut a = Rng::new(9);
        let mut b = Rng::new(9);
        for _ in 0..1000 {
            let (x, y) = (a.log_uniform(256), b.log_uniform(256));
            assert_eq!(x, y);
            assert!((1..=256).contains(&x));
            assert!(a.below(7) < 7 && b.below(7) < 7);
        }
        let mut r = Rng::new(1);
        let hits = (0..4000).filter(|_| r.log_uniform(32) == 32).count();
        assert!(hits > 0, "the maximum is reachable");
    }
}
