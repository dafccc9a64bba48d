//! Limits for the locks under one name prefix (`[policies."account"]` in
//! the config file, `policy.<prefix>` in the config bucket): the engine
//! applies the longest matching prefix's to each request.

use serde::{Deserialize, Serialize};

/// Limits for the locks under one name prefix.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrefixLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ttl_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_waiters: Option<u32>,
    /// `false`: no request may preempt a holder of these locks, even one
    /// sent on the preempt subject (`not_permitted`). Default: allowed to
    /// whoever NATS lets publish there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preempt: Option<bool>,
}
