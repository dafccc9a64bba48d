//! The run's transfers, generated from a seed, and the opening balance that
//! makes every one of them affordable in any order.

use super::ledger::Transfer;

/// Largest amount of one transfer.
const MAX_AMOUNT: u64 = 100;

/// What the run will do.
pub struct Plan {
    /// (JetStream message id, transfer), in publishing order.
    pub transfers: Vec<(String, Transfer)>,
    /// Every account's opening balance: at least what any account pays out
    /// in total, so no order of the transfers can overdraw one; a refused
    /// overdraft is therefore always a bug.
    pub initial: i64,
}

impl Plan {
    /// `count` transfers between distinct random accounts among `accounts`
    /// (at least 2), of 1 to 100 each. Message ids are `<run>-<n>`.
    pub fn generate(run: &str, accounts: u32, count: u64, seed: u64) -> Plan {
        let mut rng = SplitMix64::new(seed);
        let mut paid_out = vec![0i64; accounts as usize];
        let transfers = (0..count)
            .map(|n| {
                let from = rng.below(u64::from(accounts)) as u32;
                // Any other account, uniformly.
                let to = (from + 1 + rng.below(u64::from(accounts) - 1) as u32) % accounts;
                let amount = 1 + rng.below(MAX_AMOUNT) as i64;
                paid_out[from as usize] += amount;
                (format!("{run}-{n}"), Transfer { from, to, amount })
            })
            .collect();
        let most = paid_out.iter().copied().max().unwrap_or(0);
        Plan {
            transfers,
            initial: (most / 1000 + 1) * 1000,
        }
    }
}

/// A small, fast, seedable generator (SplitMix64): the demo needs
/// reproducible variety, not cryptographic randomness.
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0); the modulo bias is negligible here.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transfers_are_reproducible_distinct_and_affordable() {
        let a = Plan::generate("r", 3, 500, 7);
        let b = Plan::generate("r", 3, 500, 7);
        assert_eq!(a.transfers, b.transfers);
        assert_eq!(a.transfers[12].0, "r-12");
        let mut paid = [0i64; 3];
        for (_, t) in &a.transfers {
            assert_ne!(t.from, t.to);
            assert!(t.to < 3 && (1..=100).contains(&t.amount));
            paid[t.from as usize] += t.amount;
        }
        assert!(paid.iter().all(|p| *p <= a.initial));
        assert_ne!(a.transfers, Plan::generate("r", 3, 500, 8).transfers);
    }
}
