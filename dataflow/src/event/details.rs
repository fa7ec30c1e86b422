//! The optional fields of a pageview (`url`, `referrer`, `device`) for the curated `pageviews`
//! table.
//!
//! The dataflow does not need them to compute features, so [`super::CompactEvent`] (which travels
//! through every operator and into their state) leaves them out. When the job writes the curated
//! lake, ingest reads them back from the record's bytes (the record is already valid, so each is a
//! string or absent) and the event travels as a [`DetailedEvent`] up to de-duplication, after which
//! the graph emits it on its `pageviews` output and passes the plain event on.

use serde::{Deserialize, Serialize};

use super::CompactEvent;

/// The optional string fields of a pageview, as sent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PageviewDetails {
    /// The page's URL.
    #[serde(default)]
    pub url: Option<String>,
    /// The referring page.
    #[serde(default)]
    pub referrer: Option<String>,
    /// The device class, e.g. `mobile`.
    #[serde(default)]
    pub device: Option<String>,
}

impl PageviewDetails {
    /// Reads the fields from a valid record's bytes. A record that validation accepted has each
    /// field as a string or not at all, so this cannot fail for it; anything else gives no details
    /// rather than stopping the job.
    pub fn from_valid_record(bytes: &[u8]) -> PageviewDetails {
        serde_json::from_slice(bytes).unwrap_or_default()
    }
}

/// A valid, on-time event with its optional fields: what a row of the curated `pageviews` table is
/// made of.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DetailedEvent {
    /// The event as the dataflow counts it.
    pub event: CompactEvent,
    /// Its optional fields.
    pub details: PageviewDetails,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_optional_fields_and_ignores_the_rest() {
        let details = PageviewDetails::from_valid_record(
            br#"{"event_id":"e","portal":"g1","url":"https://g1/x","device":"mobile","extra":[1]}"#,
        );
        assert_eq!(details.url.as_deref(), Some("https://g1/x"));
        assert_eq!(details.referrer, None);
        assert_eq!(details.device.as_deref(), Some("mobile"));
    }
}
