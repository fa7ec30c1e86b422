//! Saved operator state as a flat sequence of entries, each routed by key or shared.
//!
//! An operator saves its state as *entries*: one per key (a user's sessions, an article's
//! windows), tagged with the same route hash its input is exchanged by, plus *shared* entries for
//! what every worker holds (a horizon, the views every worker receives by broadcast). Restoring
//! with a different number of workers only needs the routes: a keyed entry goes to worker
//! `route % workers`, exactly where the exchange would send that key's records; every worker gets
//! the shared entries of every saved worker and merges them. The bytes of an entry are opaque
//! here (`bincode` of the operator's own type), so re-partitioning never decodes them.
//!
//! Layout of one entry: a tag byte (`0` keyed, `1` shared), the route (8 bytes, little endian,
//! keyed only), the length (4 bytes, little endian), the bytes: `bincode` with variable-length
//! integers (most counts fit a byte, event times six).
//!
//! ```
//! use pageflow_dataflow::checkpoint::entries::{EntryWriter, Entry, read_entries};
//! let mut out = EntryWriter::default();
//! out.keyed(7, &("g1", "u1", 3u64)).unwrap();
//! out.shared(&42u64).unwrap();
//! let bytes = out.into_bytes();
//! let entries: Vec<Entry<'_>> = read_entries(&bytes).collect::<Result<_, _>>().unwrap();
//! assert_eq!(entries[0].route, Some(7));
//! assert_eq!(entries[1].decode::<u64>().unwrap(), 42);
//! ```

use bincode::Options;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The encoding of entries: bincode, little endian, variable-length integers.
fn encoding() -> impl Options {
    bincode::DefaultOptions::new()
}

use super::CheckpointError;

const KEYED: u8 = 0;
const SHARED: u8 = 1;

/// Collects an operator's entries.
#[derive(Debug, Default)]
pub struct EntryWriter {
    bytes: Vec<u8>,
    entries: u64,
}

impl EntryWriter {
    /// Adds an entry that belongs to the worker owning `route` (the operator's exchange hash).
    pub fn keyed<T: Serialize + ?Sized>(
        &mut self,
        route: u64,
        value: &T,
    ) -> Result<(), CheckpointError> {
        self.bytes.push(KEYED);
        self.bytes.extend_from_slice(&route.to_le_bytes());
        self.value(value)
    }

    /// Adds an entry that every worker receives when the state is restored.
    pub fn shared<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), CheckpointError> {
        self.bytes.push(SHARED);
        self.value(value)
    }

    fn value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), CheckpointError> {
        let length_at = self.bytes.len();
        self.bytes.extend_from_slice(&[0; 4]);
        encoding()
            .serialize_into(&mut self.bytes, value)
            .map_err(|error| CheckpointError::Encode(error.to_string()))?;
        let length = u32::try_from(self.bytes.len() - length_at - 4).map_err(|_| {
            CheckpointError::Encode("one state entry is larger than 4 GiB".to_string())
        })?;
        self.bytes[length_at..length_at + 4].copy_from_slice(&length.to_le_bytes());
        self.entries += 1;
        Ok(())
    }

    /// Appends an entry read from another run's state unchanged.
    pub fn copy(&mut self, entry: &Entry<'_>) {
        match entry.route {
            Some(route) => {
                self.bytes.push(KEYED);
                self.bytes.extend_from_slice(&route.to_le_bytes());
            }
            None => self.bytes.push(SHARED),
        }
        self.bytes
            .extend_from_slice(&(entry.bytes.len() as u32).to_le_bytes());
        self.bytes.extend_from_slice(entry.bytes);
        self.entries += 1;
    }

    /// Entries written so far.
    pub fn len(&self) -> u64 {
        self.entries
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// The encoded entries.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

/// One saved entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry<'a> {
    /// The key's route, or `None` for a shared entry.
    pub route: Option<u64>,
    /// The encoded value.
    pub bytes: &'a [u8],
}

impl Entry<'_> {
    /// Decodes the value.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, CheckpointError> {
        encoding()
            .deserialize(self.bytes)
            .map_err(|error| CheckpointError::Decode(error.to_string()))
    }
}

/// The entries of `bytes`, in the order they were written.
pub fn read_entries(bytes: &[u8]) -> impl Iterator<Item = Result<Entry<'_>, CheckpointError>> {
    let mut rest = bytes;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let truncated = || CheckpointError::Decode("a state entry is cut short".to_string());
        let (route, after_tag) = match rest[0] {
            KEYED => {
                let Some(route) = rest.get(1..9) else {
                    rest = &[];
                    return Some(Err(truncated()));
                };
                let mut le = [0u8; 8];
                le.copy_from_slice(route);
                (Some(u64::from_le_bytes(le)), &rest[9..])
            }
            SHARED => (None, &rest[1..]),
            tag => {
                rest = &[];
                return Some(Err(CheckpointError::Decode(format!(
                    "unknown state entry tag {tag}"
                ))));
            }
        };
        let Some(length) = after_tag.get(..4) else {
            rest = &[];
            return Some(Err(truncated()));
        };
        let mut le = [0u8; 4];
        le.copy_from_slice(length);
        let length = u32::from_le_bytes(le) as usize;
        let Some(value) = after_tag.get(4..4 + length) else {
            rest = &[];
            return Some(Err(truncated()));
        };
        rest = &after_tag[4 + length..];
        Some(Ok(Entry {
            route,
            bytes: value,
        }))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_truncation_is_an_error() -> Result<(), CheckpointError> {
        let mut out = EntryWriter::default();
        out.keyed(u64::MAX, &vec![1u32, 2, 3])?;
        out.shared(&"shared".to_string())?;
        let bytes = out.into_bytes();
        let entries: Vec<_> = read_entries(&bytes).collect::<Result<_, _>>()?;
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].route, Some(u64::MAX));
        assert_eq!(entries[0].decode::<Vec<u32>>()?, [1, 2, 3]);
        assert_eq!(entries[1].route, None);
        let cut = &bytes[..bytes.len() - 1];
        assert!(read_entries(cut).any(|entry| entry.is_err()));
        let mut copied = EntryWriter::default();
        for entry in &entries {
            copied.copy(entry);
        }
        assert_eq!(copied.into_bytes(), bytes);
        Ok(())
    }
}
