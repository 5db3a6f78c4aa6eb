//! Errors as people read them.

/// The most specific cause in an error's chain, as text ("connection refused"): what a report
/// of a failed outbound request shows.
pub fn innermost(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}
