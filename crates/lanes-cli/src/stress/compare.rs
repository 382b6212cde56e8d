//! Comparing a result with its reference, row by row.

use serde::Serialize;

use lanes_nn::Precision;

/// A result row matches its reference when both bounds hold.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Tolerance {
    /// Least cosine similarity.
    pub min_cosine: f64,
    /// Largest absolute difference of any component.
    pub max_abs_diff: f64,
}

/// The bounds for a result against its same-device reference.
pub const RESULT_TOLERANCE: Tolerance = Tolerance {
    min_cosine: 0.99999,
    max_abs_diff: 1e-5,
};

/// The bounds for the device's float32 reference against the host's reference
/// forward (different kernels and summation orders: a sanity anchor, not
/// bit-equality).
pub const ANCHOR_TOLERANCE: Tolerance = Tolerance {
    min_cosine: 0.9999,
    max_abs_diff: 1e-3,
};

/// The anchor's bounds for an encoder computing in `precision` against the float32
/// host reference: float32 as [`ANCHOR_TOLERANCE`]; float16 cosine ≥ 0.9999 and
/// bfloat16 ≥ 0.999 (issue 11's bounds), each with the largest component
/// difference two unit vectors that close can have, √(2 (1 − cosine)).
pub fn anchor_tolerance(precision: Precision) -> Tolerance {
    let min_cosine = match precision {
        Precision::Auto | Precision::F32 => return ANCHOR_TOLERANCE,
        Precision::F16 => 0.9999,
        Precision::BF16 => 0.999,
    };
    Tolerance {
        min_cosine,
        max_abs_diff: (2.0 * (1.0 - min_cosine)).sqrt(),
    }
}

/// Row-by-row comparison figures.
#[derive(Default)]
pub(crate) struct Compare {
    pub(crate) rows: usize,
    pub(crate) bad_rows: usize,
    pub(crate) min_cosine: Option<f64>,
    pub(crate) max_abs_diff: Option<f64>,
}

impl Compare {
    /// Compares `got` with `want` row by row (`hidden` values each); returns the
    /// number of bad rows and the first of them.
    pub(crate) fn rows(
        &mut self,
        got: &[f32],
        want: &[f32],
        hidden: usize,
        tol: Tolerance,
    ) -> (usize, Option<(usize, f64, f64)>) {
        let mut bad = 0;
        let mut first = None;
        for (row, (g, w)) in got
            .chunks_exact(hidden)
            .zip(want.chunks_exact(hidden))
            .enumerate()
        {
            let (cos, diff) = row_figures(g, w);
            self.rows += 1;
            self.min_cosine =
                Some(
                    self.min_cosine
                        .map_or(cos, |m| if cos.is_nan() { cos } else { m.min(cos) }),
                );
            self.max_abs_diff = Some(self.max_abs_diff.map_or(diff, |m| {
                if diff.is_nan() {
                    diff
                } else {
                    m.max(diff)
                }
            }));
            // Written so that NaN fails.
            if !(cos >= tol.min_cosine && diff <= tol.max_abs_diff) {
                bad += 1;
                self.bad_rows += 1;
                first.get_or_insert((row, cos, diff));
            }
        }
        (bad, first)
    }
}

/// Cosine similarity and largest absolute difference of two rows (f64 sums).
pub fn row_figures(a: &[f32], b: &[f32]) -> (f64, f64) {
    let (mut dot, mut na, mut nb, mut diff) = (0f64, 0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (f64::from(x), f64::from(y));
        dot += x * y;
        na += x * x;
        nb += y * y;
        let d = (x - y).abs();
        if d > diff || d.is_nan() {
            diff = d;
        }
    }
    let cos = if na == 0.0 && nb == 0.0 {
        1.0
    } else {
        dot / (na.sqrt() * nb.sqrt())
    };
    (cos, diff)
}

/// A figure for people (`n/a` when absent).
pub fn fmt_opt(v: Option<f64>) -> String {
    match v {
        Some(x) if x != 0.0 && x.abs() < 1e-3 => format!("{x:.2e}"),
        Some(x) => format!("{x:.7}"),
        None => "n/a".into(),
    }
}

/// The smaller, NaN winning.
pub(crate) fn min_opt(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(if x.is_nan() || y.is_nan() {
            f64::NAN
        } else {
            x.min(y)
        }),
        (x, None) => x,
        (None, y) => y,
    }
}

/// The larger, NaN winning.
pub(crate) fn max_opt(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(if x.is_nan() || y.is_nan() {
            f64::NAN
        } else {
            x.max(y)
        }),
        (x, None) => x,
        (None, y) => y,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_rows_match_and_perturbed_rows_do_not() {
        let a = [0.6f32, 0.8, 0.0];
        let (cos, diff) = row_figures(&a, &a);
        assert!((cos - 1.0).abs() < 1e-12 && diff == 0.0, "{cos} {diff}");
        let mut cmp = Compare::default();
        assert_eq!(cmp.rows(&a, &a, 3, RESULT_TOLERANCE).0, 0);
        let b = [0.6f32 + 1e-3, 0.8, 0.0];
        let (bad, first) = cmp.rows(&b, &a, 3, RESULT_TOLERANCE);
        assert_eq!(bad, 1);
        let (row, _, diff) = first.unwrap();
        assert_eq!(row, 0);
        assert!((diff - 1e-3).abs() < 1e-6, "{diff}");
    }

    #[test]
    fn half_precisions_get_their_documented_anchor_bounds() {
        assert_eq!(anchor_tolerance(Precision::F32).min_cosine, 0.9999);
        assert_eq!(anchor_tolerance(Precision::F32).max_abs_diff, 1e-3);
        assert_eq!(anchor_tolerance(Precision::F16).min_cosine, 0.9999);
        assert_eq!(anchor_tolerance(Precision::BF16).min_cosine, 0.999);
        let t = anchor_tolerance(Precision::F16);
        assert!(
            (t.max_abs_diff - 2e-4f64.sqrt()).abs() < 1e-12,
            "{}",
            t.max_abs_diff
        );
    }

    #[test]
    fn nan_never_matches() {
        let a = [0.6f32, 0.8];
        let n = [f32::NAN, 0.8];
        let mut cmp = Compare::default();
        assert_eq!(cmp.rows(&n, &a, 2, RESULT_TOLERANCE).0, 1);
        assert!(cmp.min_cosine.unwrap().is_nan());
    }
}
