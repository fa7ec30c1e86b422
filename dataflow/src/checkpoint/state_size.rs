//! [`StateSize`]: how big an operator's state is, as checkpoints and `pageflow bench` report it.

/// How big a state is: bytes held (estimated from the capacities of its structures) and entries
/// (its keys: users, articles, pairs, remembered ids…).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct StateSize {
    /// Bytes held in memory.
    pub bytes: u64,
    /// Keys held.
    pub entries: u64,
}

impl std::ops::AddAssign for StateSize {
    fn add_assign(&mut self, other: StateSize) {
        self.bytes += other.bytes;
        self.entries += other.entries;
    }
}
