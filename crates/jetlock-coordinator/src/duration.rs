//! Durations as people write them: `250ms`, `10s`, `1h 30m` (humantime),
//! or a plain integer, which counts milliseconds so that every value
//! written before durations took units keeps its meaning.

use serde::{Deserialize, Deserializer};

/// Reads `text` as milliseconds: an integer is ms, anything else humantime.
pub fn parse_ms(text: &str) -> Result<u64, String> {
    let text = text.trim();
    if let Ok(ms) = text.parse::<u64>() {
        return Ok(ms);
    }
    humantime::parse_duration(text)
        .map(|d| d.as_millis() as u64)
        .map_err(|e| {
            format!("{text:?} is not a duration ({e}; e.g. 250ms, 10s, 5m, or an integer of ms)")
        })
}

/// Reads `text` as whole seconds: an integer is seconds, anything else
/// humantime (rounded down).
pub fn parse_secs(text: &str) -> Result<u64, String> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(secs);
    }
    humantime::parse_duration(text)
        .map(|d| d.as_secs())
        .map_err(|e| format!("{text:?} is not a duration ({e}; e.g. 30s, 24h, or seconds)"))
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Written {
    Number(u64),
    Text(String),
}

/// `serde(deserialize_with)` for a field in ms: `10000` or `"10s"`.
pub fn ms<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    match Written::deserialize(d)? {
        Written::Number(n) => Ok(n),
        Written::Text(t) => parse_ms(&t).map_err(serde::de::Error::custom),
    }
}

/// `serde(deserialize_with)` for a field in seconds: `86400` or `"24h"`.
pub fn secs<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    match Written::deserialize(d)? {
        Written::Number(n) => Ok(n),
        Written::Text(t) => parse_secs(&t).map_err(serde::de::Error::custom),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_are_ms_and_units_are_read() {
        assert_eq!(parse_ms("250"), Ok(250));
        assert_eq!(parse_ms("250ms"), Ok(250));
        assert_eq!(parse_ms("10s"), Ok(10_000));
        assert_eq!(parse_ms("1m 30s"), Ok(90_000));
        assert!(parse_ms("ten").is_err());
        assert!(parse_ms("-5").is_err());
        assert_eq!(parse_secs("2h"), Ok(7200));
    }
}
