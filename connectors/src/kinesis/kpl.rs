//! KPL aggregation: many user records packed into one Kinesis record by the Kinesis Producer Library.
//!
//! The documented format (the KPL's `aggregation-format.md`): the 4 magic bytes `F3 89 9A C2`, a
//! protobuf `AggregatedRecord`, and the 16-byte MD5 digest of the protobuf bytes.
//!
//! ```text
//! message AggregatedRecord {
//!   repeated string partition_key_table     = 1;
//!   repeated string explicit_hash_key_table = 2;
//!   repeated Record records                 = 3;
//! }
//! message Record {
//!   required uint64 partition_key_index     = 1;
//!   optional uint64 explicit_hash_key_index = 2;
//!   required bytes  data                    = 3;
//!   repeated Tag    tags                    = 4;   // ignored
//! }
//! ```
//!
//! A record without the magic prefix is an ordinary record. One *with* the prefix whose digest or
//! body does not check out is corrupt: unlike the KCL, which passes such a record on as if it were
//! not aggregated, pageflow sends it to the dead-letter output, because its bytes are certainly not
//! a pageview. Each user record of an aggregate keeps the Kinesis sequence number of the aggregate
//! and its index as *sub-sequence number*, so a consumer can resume in the middle of one.
//!
//! ```
//! use pageflow_connectors::kinesis::kpl::{Deaggregated, aggregate, deaggregate};
//! let packed = aggregate(&[("u1", b"first".as_slice()), ("u2", b"second".as_slice())]);
//! match deaggregate(&packed) {
//!     Deaggregated::Aggregated(records) => assert_eq!(records[1].data, b"second"),
//!     other => panic!("{other:?}"),
//! }
//! assert!(matches!(deaggregate(b"{\"plain\":1}"), Deaggregated::NotAggregated));
//! ```

use md5::{Digest, Md5};

/// The first bytes of every KPL aggregated record.
pub const KPL_MAGIC: [u8; 4] = [0xF3, 0x89, 0x9A, 0xC2];
const DIGEST_LEN: usize = 16;

/// One user record out of an aggregate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserRecord {
    /// The user record's own partition key.
    pub partition_key: String,
    /// Its explicit hash key, if the producer set one.
    pub explicit_hash_key: Option<String>,
    /// Its bytes.
    pub data: Vec<u8>,
    /// Its index in the aggregate: the sub-sequence number.
    pub sub_sequence: u64,
}

/// What a Kinesis record turned out to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Deaggregated {
    /// An ordinary record: use its bytes as they are.
    NotAggregated,
    /// A valid aggregate and its user records, in order.
    Aggregated(Vec<UserRecord>),
    /// The magic prefix, but a bad digest or body: why.
    Corrupt(String),
}

/// Unpacks a Kinesis record's data.
pub fn deaggregate(data: &[u8]) -> Deaggregated {
    let Some(rest) = data.strip_prefix(&KPL_MAGIC) else {
        return Deaggregated::NotAggregated;
    };
    if rest.len() < DIGEST_LEN {
        return Deaggregated::Corrupt(format!(
            "KPL aggregate of {} bytes is too short for its 16-byte MD5 trailer",
            data.len()
        ));
    }
    let (body, digest) = rest.split_at(rest.len() - DIGEST_LEN);
    if Md5::digest(body).as_slice() != digest {
        return Deaggregated::Corrupt(
            "KPL aggregate's MD5 trailer does not match its body: the record was damaged"
                .to_string(),
        );
    }
    match parse_aggregate(body) {
        Ok(records) => Deaggregated::Aggregated(records),
        Err(reason) => Deaggregated::Corrupt(format!(
            "KPL aggregate body is not a valid AggregatedRecord: {reason}"
        )),
    }
}

/// Packs user records `(partition_key, data)` into one KPL aggregate (for producers and tests).
pub fn aggregate(records: &[(&str, &[u8])]) -> Vec<u8> {
    let mut keys: Vec<&str> = Vec::new();
    let mut body = Vec::new();
    for (key, _) in records {
        if !keys.contains(key) {
            keys.push(key);
        }
    }
    for key in &keys {
        write_bytes_field(&mut body, 1, key.as_bytes());
    }
    for (key, data) in records {
        let mut record = Vec::new();
        let index = keys.iter().position(|k| k == key).unwrap_or(0) as u64;
        write_key(&mut record, 1, 0);
        write_varint(&mut record, index);
        write_bytes_field(&mut record, 3, data);
        write_bytes_field(&mut body, 3, &record);
    }
    let mut out = KPL_MAGIC.to_vec();
    out.extend_from_slice(&body);
    out.extend_from_slice(&Md5::digest(&body));
    out
}

fn parse_aggregate(body: &[u8]) -> Result<Vec<UserRecord>, String> {
    let mut keys = Vec::new();
    let mut hash_keys = Vec::new();
    let mut raw_records = Vec::new();
    let mut reader = Reader { bytes: body, at: 0 };
    while !reader.done() {
        let (field, wire) = reader.key()?;
        match (field, wire) {
            (1, 2) => keys.push(reader.string()?),
            (2, 2) => hash_keys.push(reader.string()?),
            (3, 2) => raw_records.push(reader.bytes()?),
            _ => reader.skip(wire)?,
        }
    }
    raw_records
        .into_iter()
        .enumerate()
        .map(|(index, bytes)| {
            let mut reader = Reader { bytes, at: 0 };
            let (mut key_index, mut hash_index, mut data) = (None, None, None);
            while !reader.done() {
                let (field, wire) = reader.key()?;
                match (field, wire) {
                    (1, 0) => key_index = Some(reader.varint()?),
                    (2, 0) => hash_index = Some(reader.varint()?),
                    (3, 2) => data = Some(reader.bytes()?.to_vec()),
                    _ => reader.skip(wire)?,
                }
            }
            let key_index =
                key_index.ok_or(format!("user record {index} has no partition_key_index"))?;
            let partition_key = keys.get(key_index as usize).cloned().ok_or(format!(
                "user record {index} points to partition key {key_index}, beyond the table"
            ))?;
            let explicit_hash_key = match hash_index {
                None => None,
                Some(i) => Some(hash_keys.get(i as usize).cloned().ok_or(format!(
                    "user record {index} points to hash key {i}, beyond the table"
                ))?),
            };
            let data = data.ok_or(format!("user record {index} has no data"))?;
            Ok(UserRecord {
                partition_key,
                explicit_hash_key,
                data,
                sub_sequence: index as u64,
            })
        })
        .collect()
}

/// A protobuf wire-format reader over a byte slice that never panics.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn done(&self) -> bool {
        self.at >= self.bytes.len()
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self.bytes.get(self.at).ok_or("truncated varint")?;
            self.at += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("varint longer than 10 bytes".to_string())
    }

    fn key(&mut self) -> Result<(u64, u8), String> {
        let key = self.varint()?;
        Ok((key >> 3, (key & 7) as u8))
    }

    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let len = usize::try_from(self.varint()?).map_err(|_| "length does not fit in memory")?;
        let end = self
            .at
            .checked_add(len)
            .filter(|end| *end <= self.bytes.len())
            .ok_or("length past the end")?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    fn string(&mut self) -> Result<String, String> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| "a key is not UTF-8".to_string())
    }

    fn skip(&mut self, wire: u8) -> Result<(), String> {
        match wire {
            0 => self.varint().map(drop),
            1 => self.advance(8),
            2 => self.bytes().map(drop),
            5 => self.advance(4),
            other => Err(format!("unsupported wire type {other}")),
        }
    }

    fn advance(&mut self, n: usize) -> Result<(), String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|end| *end <= self.bytes.len())
            .ok_or("field past the end")?;
        self.at = end;
        Ok(())
    }
}

fn write_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn write_key(out: &mut Vec<u8>, field: u64, wire: u64) {
    write_varint(out, (field << 3) | wire);
}

fn write_bytes_field(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    write_key(out, field, 2);
    write_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn a_known_aggregate_decodes() {
        let packed = aggregate(&[
            ("u1", b"a".as_slice()),
            ("u2", b"bb".as_slice()),
            ("u1", b"ccc".as_slice()),
        ]);
        let Deaggregated::Aggregated(records) = deaggregate(&packed) else {
            panic!("valid aggregate")
        };
        let summary: Vec<(&str, &[u8], u64)> = records
            .iter()
            .map(|r| (r.partition_key.as_str(), r.data.as_slice(), r.sub_sequence))
            .collect();
        assert_eq!(
            summary,
            [
                ("u1", b"a".as_slice(), 0),
                ("u2", b"bb".as_slice(), 1),
                ("u1", b"ccc".as_slice(), 2)
            ]
        );
    }

    #[test]
    fn damaged_aggregates_are_corrupt_not_passed_on() {
        let mut packed = aggregate(&[("u1", b"payload".as_slice())]);
        let middle = packed.len() / 2;
        packed[middle] ^= 0x40;
        assert!(
            matches!(deaggregate(&packed), Deaggregated::Corrupt(reason) if reason.contains("MD5"))
        );
        assert!(
            matches!(deaggregate(&KPL_MAGIC), Deaggregated::Corrupt(reason) if reason.contains("too short"))
        );
        // A correct digest over a body that is not an AggregatedRecord.
        let body = [0x1a, 0x05, 0x01];
        let mut bad = KPL_MAGIC.to_vec();
        bad.extend_from_slice(&body);
        bad.extend_from_slice(&Md5::digest(body));
        assert!(
            matches!(deaggregate(&bad), Deaggregated::Corrupt(reason) if reason.contains("not a valid"))
        );
    }

    proptest! {
        #[test]
        fn aggregates_round_trip(records in prop::collection::vec(("[a-z0-9]{1,8}", prop::collection::vec(any::<u8>(), 0..64)), 1..20)) {
            let input: Vec<(&str, &[u8])> = records.iter().map(|(k, d)| (k.as_str(), d.as_slice())).collect();
            let Deaggregated::Aggregated(out) = deaggregate(&aggregate(&input)) else {
                return Err(TestCaseError::fail("not decoded"));
            };
            let back: Vec<(&str, &[u8])> = out.iter().map(|r| (r.partition_key.as_str(), r.data.as_slice())).collect();
            prop_assert_eq!(back, input);
        }

        #[test]
        fn never_panics_on_arbitrary_bytes(mut tail in prop::collection::vec(any::<u8>(), 0..200), fix_digest: bool) {
            let mut data = KPL_MAGIC.to_vec();
            if fix_digest {
                let digest = Md5::digest(&tail);
                tail.extend_from_slice(&digest);
            }
            data.extend_from_slice(&tail);
            let _ = deaggregate(&data);
        }
    }
}
