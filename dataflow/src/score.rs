//! The two scores that rank articles, shared by the job and the batch oracle so both compute the
//! same `f64` bit for bit (see `docs/semantics-notes.md`, N14 and N16).

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
