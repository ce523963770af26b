//! Which changes of a batch go together (bors' rule, small): the whole batch is tested first;
//! if it fails, the longest prefix that passes is found by halving, so one bad change costs
//! about log2(batch) checks and the changes before it still merge. Pure: the runner tells it
//! what each check said.

/// The search for the longest passing prefix of a batch of `n` changes (the first is the task
/// the integrator holds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bisect {
    n: usize,
    /// The longest prefix known to pass (0: none yet).
    pass: usize,
    /// The shortest prefix known to fail (`n + 1`: none yet).
    fail: usize,
}

impl Bisect {
    pub fn new(n: usize) -> Bisect {
        let n = n.max(1);
        Bisect { n, pass: 0, fail: n + 1 }
    }

    /// The prefix to check next, or `None` when the answer is known.
    pub fn next(&self) -> Option<usize> {
        if self.fail <= self.pass + 1 {
            return None;
        }
        // The whole batch first: the common case is that everything passes.
        Some(if self.pass == 0 && self.fail == self.n + 1 { self.n } else { ((self.pass + self.fail) / 2).max(1) })
    }

    /// What the check of prefix `k` said.
    pub fn record(&mut self, k: usize, passed: bool) {
        if passed {
            self.pass = self.pass.max(k);
        } else {
            self.fail = self.fail.min(k);
        }
    }

    /// How many changes merge (0: not even the first).
    pub fn passing(&self) -> usize {
        self.pass
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Runs the search against a batch whose first `good` changes pass together.
    fn search(n: usize, good: usize) -> (usize, Vec<usize>) {
        let mut b = Bisect::new(n);
        let mut probes = Vec::new();
        while let Some(k) = b.next() {
            probes.push(k);
            b.record(k, k <= good);
            assert!(probes.len() <= 20, "{probes:?}");
        }
        (b.passing(), probes)
    }

    #[test]
    fn a_green_batch_costs_one_check_and_a_bad_change_a_few() {
        assert_eq!(search(1, 1), (1, vec![1]));
        assert_eq!(search(1, 0), (0, vec![1]));
        assert_eq!(search(8, 8), (8, vec![8]));
        assert_eq!(search(8, 5), (5, vec![8, 4, 6, 5]));
        assert_eq!(search(8, 0), (0, vec![8, 4, 2, 1]));
    }

    proptest! {
        #[test]
        fn the_longest_passing_prefix_is_found_in_few_checks(n in 1usize..64, good in 0usize..64) {
            let good = good.min(n);
            let (found, probes) = search(n, good);
            prop_assert_eq!(found, good);
            prop_assert!(probes.len() <= 2 + (n as f64).log2().ceil() as usize, "{:?}", probes);
        }
    }
}
