//! Reading the listed objects' bytes in the backfill order, without holding the archive in
//! memory.
//!
//! - **Local files** are opened one at a time, when the previous one is done, and read in chunks
//!   by the JSON-lines reader: memory does not depend on the archive's size.
//! - **S3 objects** are fetched by a read-ahead thread, **one hour at a time**: while the graph
//!   processes hour N, the thread downloads the objects of hour N + 1 (`GetObject`, with the SDK's
//!   retries), then waits until hour N is done before it hands hour N + 1 over and starts on
//!   N + 2. At most two hours of objects (as stored, so compressed) are in memory. A failure is
//!   handed over in place of the hour and stops the backfill with the object's key.
//! - **Compression**: the Firehose delivery stream writes gzip objects (`CompressionFormat: GZIP`
//!   in `deploy/cloudformation/pageflow.yaml`); the local archive writes plain JSON lines. Each
//!   object is decompressed (as a stream) when its first two bytes are gzip's magic number
//!   (`1f 8b`), whatever its name; otherwise it is read as it is. A JSON line cannot start with
//!   `0x1f`, so the two cannot be confused. Objects of several gzip members (concatenated
//!   files) are read to their end.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use pageflow_dataflow::source::SourceError;

use super::layout::{ArchiveObject, Hour};

/// The gzip magic number, the first two bytes of every gzip file.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// One object, opened: its events' hour, its name for dead letters and messages, its bytes.
pub struct OpenedObject {
    /// The hour of event time its events belong to.
    pub hour: Hour,
    /// `file:<path>` or `s3://bucket/key`: where its records came from.
    pub label: String,
    /// Its decompressed bytes, as a stream.
    pub reader: Box<dyn Read + Send>,
}

impl std::fmt::Debug for OpenedObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenedObject")
            .field("hour", &self.hour)
            .field("label", &self.label)
            .finish_non_exhaustive()
    }
}

/// The objects of an archive, opened one after the other in the backfill order.
pub type ObjectStream = Box<dyn Iterator<Item = Result<OpenedObject, SourceError>> + Send>;

/// `reader`, decompressed when it starts with gzip's magic number (see the module docs).
pub fn decompressed<R: Read + Send + 'static>(reader: R) -> std::io::Result<Box<dyn Read + Send>> {
    let mut buffered = BufReader::with_capacity(64 * 1024, reader);
    // Two bytes may arrive in two reads: look until there are two, or the end.
    let mut head = buffered.fill_buf()?.to_vec();
    if head.len() == 1 {
        let mut second = [0u8; 1];
        buffered.consume(1);
        let read = buffered.read(&mut second)?;
        head.extend_from_slice(&second[..read]);
        // Put the bytes back in front of the rest.
        let rest: Box<dyn Read + Send> =
            Box::new(std::io::Cursor::new(head.clone()).chain(buffered));
        return Ok(if head.starts_with(&GZIP_MAGIC) {
            Box::new(flate2::read::MultiGzDecoder::new(rest))
        } else {
            rest
        });
    }
    if head.starts_with(&GZIP_MAGIC) {
        Ok(Box::new(flate2::read::MultiGzDecoder::new(buffered)))
    } else {
        Ok(Box::new(buffered))
    }
}

/// Local files, opened one at a time in `objects`' order.
pub fn local_objects(objects: Vec<ArchiveObject>) -> ObjectStream {
    Box::new(objects.into_iter().map(|object| {
        let label = format!("file:{}", object.location);
        let fail = |error: std::io::Error| SourceError {
            message: format!(
                "cannot read {}: {error} (was the archive changed while the backfill ran?)",
                object.location
            ),
            retryable: false,
        };
        let file = std::fs::File::open(&object.location).map_err(fail)?;
        Ok(OpenedObject {
            hour: object.hour,
            label,
            reader: decompressed(file).map_err(fail)?,
        })
    }))
}

/// The objects of one hour, downloaded.
type FetchedHour = Result<Vec<(ArchiveObject, Vec<u8>)>, SourceError>;

/// S3 objects of `bucket`, fetched an hour ahead by a thread that owns `runtime` (see the module
/// docs).
pub fn s3_objects(
    runtime: tokio::runtime::Runtime,
    s3: aws_sdk_s3::Client,
    bucket: String,
    objects: Vec<ArchiveObject>,
) -> ObjectStream {
    let mut hours: Vec<Vec<ArchiveObject>> = Vec::new();
    for object in objects {
        match hours.last_mut() {
            Some(hour) if hour[0].hour == object.hour => hour.push(object),
            _ => hours.push(vec![object]),
        }
    }
    // A rendezvous channel: the thread hands hour N + 1 over only when hour N is done, so at
    // most the hour being read and the one just fetched are in memory.
    let (sender, receiver) = sync_channel::<FetchedHour>(0);
    let label_bucket = bucket.clone();
    let thread = std::thread::Builder::new()
        .name("backfill-read-ahead".to_string())
        .spawn(move || fetch_hours(&runtime, &s3, &bucket, hours, &sender));
    if let Err(error) = thread {
        let failure = SourceError {
            message: format!("cannot start the thread that downloads the archive: {error}"),
            retryable: false,
        };
        return Box::new(std::iter::once(Err(failure)));
    }
    Box::new(FetchedObjects {
        receiver,
        bucket: label_bucket,
        ready: VecDeque::new(),
        failed: false,
    })
}

/// The read-ahead thread: downloads each hour's objects and hands the hour over.
fn fetch_hours(
    runtime: &tokio::runtime::Runtime,
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    hours: Vec<Vec<ArchiveObject>>,
    sender: &SyncSender<FetchedHour>,
) {
    for hour in hours {
        let fetched = runtime.block_on(async {
            let mut fetched = Vec::with_capacity(hour.len());
            for object in hour {
                let bytes = get_object(s3, bucket, &object.location).await?;
                fetched.push((object, bytes));
            }
            Ok(fetched)
        });
        let failed = fetched.is_err();
        // The receiver is gone when the backfill stopped: nothing more to fetch for.
        if sender.send(fetched).is_err() || failed {
            return;
        }
    }
}

/// One object's bytes, as stored.
async fn get_object(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
) -> Result<Vec<u8>, SourceError> {
    let fail = |what: String| SourceError {
        message: format!(
            "cannot download s3://{bucket}/{key}: {what} (the SDK's retries did not help; check \
             the credentials and [aws] in --config, then run the backfill again)"
        ),
        retryable: false,
    };
    let response = s3
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .map_err(|error| fail(aws_sdk_s3::Error::from(error).to_string()))?;
    let body = response
        .body
        .collect()
        .await
        .map_err(|error| fail(error.to_string()))?;
    Ok(body.into_bytes().to_vec())
}

/// The receiving end of the read-ahead: hands the fetched objects out one by one.
struct FetchedObjects {
    receiver: Receiver<FetchedHour>,
    /// The bucket, for the objects' labels.
    bucket: String,
    /// The objects of the current hour not handed out yet.
    ready: VecDeque<(ArchiveObject, Vec<u8>)>,
    /// A failure was handed out: nothing more follows.
    failed: bool,
}

impl Iterator for FetchedObjects {
    type Item = Result<OpenedObject, SourceError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        while self.ready.is_empty() {
            match self.receiver.recv() {
                Ok(Ok(hour)) => self.ready.extend(hour),
                Ok(Err(error)) => {
                    self.failed = true;
                    return Some(Err(error));
                }
                // Every hour was handed over.
                Err(_) => return None,
            }
        }
        let (object, bytes) = self.ready.pop_front()?;
        let label = format!("s3://{}/{}", self.bucket, object.location);
        Some(
            decompressed(std::io::Cursor::new(bytes))
                .map(|reader| OpenedObject {
                    hour: object.hour,
                    label,
                    reader,
                })
                .map_err(|error| SourceError {
                    message: format!(
                        "cannot read s3://{}/{}: {error}",
                        self.bucket, object.location
                    ),
                    retryable: false,
                }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    fn read_all(reader: &mut dyn Read) -> std::io::Result<Vec<u8>> {
        let mut bytes = Vec::new();
        reader.read_to_end(&mut bytes)?;
        Ok(bytes)
    }

    #[test]
    fn gzip_is_recognised_by_its_magic_number_and_plain_text_passes() -> std::io::Result<()> {
        let text = b"{\"a\":1}\n{\"a\":2}\n".to_vec();
        let mut gzipped = Vec::new();
        for _ in 0..2 {
            // Two members, as concatenated gzip files are.
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            encoder.write_all(&text)?;
            gzipped.extend(encoder.finish()?);
        }
        let doubled = [text.clone(), text.clone()].concat();
        assert_eq!(
            read_all(&mut decompressed(std::io::Cursor::new(gzipped))?)?,
            doubled
        );
        assert_eq!(
            read_all(&mut decompressed(std::io::Cursor::new(text.clone()))?)?,
            text
        );
        assert_eq!(
            read_all(&mut decompressed(std::io::Cursor::new(b"x".to_vec()))?)?,
            b"x"
        );
        assert!(read_all(&mut decompressed(std::io::Cursor::new(Vec::new()))?)?.is_empty());
        Ok(())
    }

    /// A reader that hands out one byte per read.
    struct OneByte(std::io::Cursor<Vec<u8>>);
    impl Read for OneByte {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let end = buf.len().min(1);
            self.0.read(&mut buf[..end])
        }
    }

    #[test]
    fn the_magic_number_split_over_two_reads_is_still_seen() -> std::io::Result<()> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(b"{}\n")?;
        let gzipped = encoder.finish()?;
        let mut reader = decompressed(OneByte(std::io::Cursor::new(gzipped)))?;
        assert_eq!(read_all(&mut reader)?, b"{}\n");
        Ok(())
    }
}
