//! The wall clock, read in one place: milliseconds since the Unix epoch.

/// Now, as milliseconds since the Unix epoch (0 on a clock set before 1970).
pub fn epoch_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
