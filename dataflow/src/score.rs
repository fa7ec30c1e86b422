//! The two scores that rank articles, shared by the job and the batch oracle so both compute the
//! same `f64` bit for bit (see `docs/semantics-notes.md`, N14 and N16), and the exact order of
//! related partners (N16a), shared so both break the same ties.

use std::cmp::Ordering;

/// The trending score of an article in one window (N14).
///
/// `recent_users` and `recent_engaged_users` are distinct users in the recent part of the window,
/// `older_views` the views in the rest; `recent_ms` and `window_ms` the two lengths.
/// `score = (u + e − baseline) / sqrt(baseline + 1)` with `baseline = older · R / (W − R)`.
///
/// ```
/// use pageflow_dataflow::score::trending_score;
/// let (r, w) = (600_000, 3_600_000);
/// // A spike from nothing: 30 new readers, 10 of them engaged.
/// let spike = trending_score(30, 10, 0, r, w);
/// // A steady article: 500 older views (~100 expected in the recent part), 100 recent readers.
/// let steady = trending_score(100, 0, 500, r, w);
/// assert!(spike > steady && steady.abs() < 1.0);
/// ```
pub fn trending_score(
    recent_users: u64,
    recent_engaged_users: u64,
    older_views: u64,
    recent_ms: u64,
    window_ms: u64,
) -> f64 {
    let baseline = older_views as f64 * recent_ms as f64 / (window_ms - recent_ms) as f64;
    let signal = (recent_users + recent_engaged_users) as f64;
    (signal - baseline) / (baseline + 1.0).sqrt()
}

/// The normalised co-occurrence of `a` and `b` (N16): `cooc / sqrt(views(a) · views(b))`.
///
/// ```
/// use pageflow_dataflow::score::related_score;
/// assert_eq!(related_score(4, 4, 16), 0.5);
/// ```
pub fn related_score(cooc: u64, views_a: u64, views_b: u64) -> f64 {
    cooc as f64 / (views_a as f64 * views_b as f64).sqrt()
}

/// The order of two partners `x` and `y` of one article `a` in `related(a)` by score descending,
/// decided exactly (N16a): `Less` when `x` comes before `y`, `Equal` when their scores are equal as
/// real numbers (the caller then orders them by `article_id`).
///
/// The scores are `cooc_x / sqrt(views(a) · views_x)` and `cooc_y / sqrt(views(a) · views_y)`
/// ([`related_score`]); `views(a)` is common to both, so for positive views
/// `score_x > score_y` exactly when `cooc_x² · views_y > cooc_y² · views_x`, which is compared in
/// integers. The `f64` scores cannot decide it: two equal scores may be rounded apart, and the tie
/// would then be broken by rounding instead of by `article_id`.
///
/// ```
/// use std::cmp::Ordering;
/// use pageflow_dataflow::score::{related_order, related_score};
/// // 2 / sqrt(v · 4) and 7 / sqrt(v · 49) are both 1 / sqrt(v): a tie …
/// assert_eq!(related_order(2, 4, 7, 49), Ordering::Equal);
/// // … which f64 would not see (with views(a) = 2, the second rounds one unit higher).
/// assert!(related_score(2, 2, 4) < related_score(7, 2, 49));
/// // A larger score comes first: 3 / sqrt(v · 4) before 2 / sqrt(v · 4).
/// assert_eq!(related_order(3, 4, 2, 4), Ordering::Less);
/// ```
pub fn related_order(cooc_x: u64, views_x: u64, cooc_y: u64, views_y: u64) -> Ordering {
    // Descending: x first (Less) when cooc_x² · views_y is the larger.
    cooc_squared_times(cooc_y, views_x).cmp(&cooc_squared_times(cooc_x, views_y))
}

/// `cooc² · views` exactly, as `(high, low)`: the value is `high · 2⁶⁴ + low`, so comparing the
/// pairs compares the values. `cooc²` fits in `u128` but its product with `views` may need up to
/// 192 bits, so it is multiplied in two 64-bit halves; nothing can overflow whatever the counts.
fn cooc_squared_times(cooc: u64, views: u64) -> (u128, u64) {
    let square = u128::from(cooc) * u128::from(cooc);
    let (square_high, square_low) = (square >> 64, square & u128::from(u64::MAX));
    let views = u128::from(views);
    // Each partial product is below 2¹²⁸; the high part of the sum is below 2¹²⁸ because the whole
    // product is below 2¹⁹².
    let low_product = square_low * views;
    let high = square_high * views + (low_product >> 64);
    // Truncation intended: the low 64 bits of the product.
    let low = (low_product & u128::from(u64::MAX)) as u64;
    (high, low)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f64_scores_would_break_exact_ties_by_rounding() {
        // Exactly equal scores (cooc² · views of the other partner are equal) whose f64s differ in
        // the last bit, in both directions: (views(a), cooc_x, views_x, cooc_y, views_y).
        for (views_a, cooc_x, views_x, cooc_y, views_y) in [
            (2, 2, 4, 7, 49),
            (8, 2, 4, 7, 49),
            (3, 2, 4, 7, 49),
            (1, 1, 2, 3, 18),
            (1, 1, 3, 3, 27),
        ] {
            assert_eq!(cooc_x * cooc_x * views_y, cooc_y * cooc_y * views_x);
            let (score_x, score_y) = (
                related_score(cooc_x, views_a, views_x),
                related_score(cooc_y, views_a, views_y),
            );
            assert_ne!(score_x, score_y, "f64 sees no difference for {views_a}");
            // By f64 one would come first, so the tie would not fall to article_id.
            assert_eq!(score_x.to_bits().abs_diff(score_y.to_bits()), 1);
            assert_eq!(
                related_order(cooc_x, views_x, cooc_y, views_y),
                Ordering::Equal
            );
            assert_eq!(
                related_order(cooc_y, views_y, cooc_x, views_x),
                Ordering::Equal
            );
        }
    }

    #[test]
    fn related_order_agrees_with_the_scores_apart_from_rounding() {
        for cooc_x in 1..12 {
            for views_x in 1..40 {
                for cooc_y in 1..12 {
                    for views_y in 1..40 {
                        let order = related_order(cooc_x, views_x, cooc_y, views_y);
                        assert_eq!(
                            order.reverse(),
                            related_order(cooc_y, views_y, cooc_x, views_x)
                        );
                        let (x, y) = (
                            related_score(cooc_x, 5, views_x),
                            related_score(cooc_y, 5, views_y),
                        );
                        if (x - y).abs() > 1e-12 {
                            // Descending: the higher score comes first.
                            assert_eq!(
                                order,
                                y.total_cmp(&x),
                                "{cooc_x}/{views_x} vs {cooc_y}/{views_y}"
                            );
                        } else {
                            // Scores this close are exactly equal here (small counts).
                            assert_eq!(
                                order,
                                Ordering::Equal,
                                "{cooc_x}/{views_x} vs {cooc_y}/{views_y}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn related_order_does_not_overflow() {
        let max = u64::MAX;
        assert_eq!(related_order(max, max, max, max), Ordering::Equal);
        // max² / (max − 1) > max² / max: the partner with fewer views comes first.
        assert_eq!(related_order(max, max - 1, max, max), Ordering::Less);
        assert_eq!(related_order(max, max, max, max - 1), Ordering::Greater);
        // max² · 1 against (max − 1)² · max: max > (max − 1)² / max … compared without wrapping.
        assert_eq!(related_order(max, 1, max - 1, max), Ordering::Less);
        assert_eq!(cooc_squared_times(max, max).0 >> 127, 1);
        assert_eq!(cooc_squared_times(3, 5), (0, 45));
        assert_eq!(cooc_squared_times(1 << 32, 1 << 32), (1 << 32, 0));
    }
}
