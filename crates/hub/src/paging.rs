//! Listings are paged: at most [`MAX_PAGE`] rows, [`DEFAULT_PAGE`] by default, with an opaque
//! cursor (the hex of the last row's key) that a client passes back for the next page.

use proto::api::{ApiError, ErrorCode, DEFAULT_PAGE, MAX_PAGE};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Longest cursor accepted; real ones are a few dozen characters.
const MAX_CURSOR: usize = 1024;

pub fn page_size(limit: Option<u32>) -> Result<usize, ApiError> {
    match limit {
        None => Ok(DEFAULT_PAGE as usize),
        Some(n) if (1..=MAX_PAGE).contains(&n) => Ok(n as usize),
        Some(_) => {
            Err(ApiError::new(ErrorCode::InvalidQuery).msg(format!("limit: expected an integer from 1 to {MAX_PAGE}")))
        }
    }
}

pub fn encode<K: Serialize>(key: &K) -> String {
    hex::encode(serde_json::to_vec(key).expect("cursor keys serialize"))
}

pub fn decode<K: DeserializeOwned>(cursor: Option<&str>) -> Result<Option<K>, ApiError> {
    let Some(c) = cursor else { return Ok(None) };
    let bad = || ApiError::new(ErrorCode::InvalidQuery).msg("cursor: not a cursor this hub handed out");
    if c.len() > MAX_CURSOR {
        return Err(bad());
    }
    let bytes = hex::decode(c).map_err(|_| bad())?;
    serde_json::from_slice(&bytes).map(Some).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_roundtrip_and_garbage_is_refused() {
        let c = encode(&("agent-1".to_string(), 5u64));
        assert_eq!(decode::<(String, u64)>(Some(&c)).unwrap(), Some(("agent-1".to_string(), 5)));
        for bad in ["zz", "7b7d", &"0".repeat(5000)] {
            assert_eq!(decode::<i64>(Some(bad)).unwrap_err().error, ErrorCode::InvalidQuery, "{bad}");
        }
        assert_eq!(page_size(None).unwrap(), 100);
        assert!(page_size(Some(0)).is_err() && page_size(Some(1001)).is_err());
    }
}
